"""``llamafactory-wspo generate`` and ``export-alpaca-eval`` on a tiny model, checked against independent
computations; a generation killed mid-run and resumed writes what an uninterrupted one does."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.cli import cli_command, one_line_error, qwen_prompt_ids, read_jsonl, run_cli
from helpers.train import base_env
from transformers import AutoModelForCausalLM, AutoTokenizer


def greedy_reference(model, prompt_ids: list[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
    r"""Greedy decoding by full forward passes and argmax, without a cache, padding or ``generate``."""
    ids = list(prompt_ids)
    out = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        token = int(logits.argmax())
        if token in stop_ids:
            break
        out.append(token)
        ids.append(token)
    return out


@pytest.mark.slow
def test_greedy_generation_matches_reference(assets: Path, tmp_path: Path) -> None:
    prompts = [
        {"instruction": "list some animals", "output": "cat dog"},
        {"instruction": "name a few colors for a little party", "input": "red", "output": "red blue"},
        {"instruction": "tell me fruits", "output": "apple"},
    ]
    source = tmp_path / "prompts.json"
    source.write_text(json.dumps(prompts))
    out = tmp_path / "greedy.jsonl"
    # batch size 2: the second batch has one prompt, the first mixes lengths (left padding must not matter)
    run_cli(
        "generate", f"model_name_or_path={assets / 'weak'}", "template=qwen", f"input_file={source}",
        f"output_file={out}", "max_new_tokens=8", "batch_size=2", "infer_backend=huggingface",
    )  # fmt: skip
    rows = read_jsonl(out)

    tokenizer = AutoTokenizer.from_pretrained(assets / "weak")
    model = AutoModelForCausalLM.from_pretrained(assets / "weak").eval()
    stop_ids = {tokenizer.eos_token_id}
    assert [row["label"] for row in rows] == [prompt["output"] for prompt in prompts]
    for prompt, row in zip(prompts, rows):
        user = prompt["instruction"] + ("\n" + prompt["input"] if "input" in prompt else "")
        assert row["instruction"] == user
        prompt_ids = qwen_prompt_ids(tokenizer, user)
        assert row["prompt"] == tokenizer.decode(prompt_ids, skip_special_tokens=False)
        expected = tokenizer.decode(greedy_reference(model, prompt_ids, 8, stop_ids), skip_special_tokens=True)
        assert row["predict"] == expected.strip()


def start_killable(command: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(command, *args),
        env=base_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_after_rows(proc: subprocess.Popen, path: Path, rows: int) -> None:
    r"""SIGKILL ``proc`` (and its children) once ``path`` holds ``rows`` lines."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if path.is_file() and path.read_text().count("\n") >= rows:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sampling_killed_resumed_and_exported(assets: Path, tmp_path: Path) -> None:
    r"""Samples of a data set; a run killed mid-way and resumed (another batch size), or split into shards, writes the
    same rows."""
    config = tmp_path / "gen.yaml"  # a YAML file of options, overridden by key=value and --key value
    config.write_text(
        f"model_name_or_path: {assets / 'weak'}\ntemplate: qwen\ndataset: tiny_sft_eval\n"
        f"dataset_dir: {assets / 'data'}\nmax_samples: 2\nnum_samples: 3\ntemperature: 0.5\nmax_new_tokens: 8\n"
    )
    options = [config, "max_samples=24", "num_samples=2", "temperature=1.0", "--top_p", "0.95", "seed=3"]
    out = tmp_path / "samples.jsonl"
    run_cli("generate", *options, f"output_file={out}", "batch_size=4")
    rows = read_jsonl(out)
    data = json.loads((assets / "data" / "tiny_sft_eval.json").read_text())[:24]
    assert [row["label"] for row in rows] == [example["output"] for example in data]
    assert [row["instruction"] for row in rows] == [
        example["instruction"] + (f"\n{example['input']}" if example.get("input") else "") for example in data
    ]
    assert all(isinstance(row["predict"], list) and len(row["predict"]) == 2 for row in rows)
    assert len({sample for row in rows for sample in row["predict"]}) > 24, "sampling gave identical outputs"

    # Killed mid-run, then resumed: prompt i samples with seed + i, whatever the batches and the resume point.
    resumed = tmp_path / "resumed.jsonl"
    kill_after_rows(start_killable("generate", *options, f"output_file={resumed}", "batch_size=1"), resumed, 2)
    kept = read_jsonl(resumed)
    assert 2 <= len(kept) < 24, "the kill must land mid-run"
    assert kept == rows[: len(kept)], "every row written before the kill is final"
    with open(resumed, "a") as handle:  # what a kill in the middle of a write leaves
        handle.write('{"instruction": "list so')
    run_cli("generate", *options, f"output_file={resumed}", "batch_size=1")
    assert read_jsonl(resumed) == rows

    # Two shards (one process each, as on two GPUs) give the rows of the whole run between them.
    shards = [tmp_path / f"shard{index}.jsonl" for index in range(2)]
    procs = [
        subprocess.Popen(
            cli_command("generate", *options, f"output_file={shard}", "num_shards=2", f"shard_index={index}"),
            env=base_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index, shard in enumerate(shards)
    ]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    assert read_jsonl(shards[0]) == rows[0::2] and read_jsonl(shards[1]) == rows[1::2]

    alpaca = tmp_path / "alpaca_eval.json"
    one_line_error(run_cli("export-alpaca-eval", out, alpaca, check=False), "--sample_index")
    assert not alpaca.exists()
    run_cli("export-alpaca-eval", out, alpaca, "--sample-index", 1, "generator=tiny")  # kebab-case accepted
    converted = json.loads(alpaca.read_text())
    assert converted == [
        {"instruction": row["instruction"], "output": row["predict"][1], "generator": "tiny"} for row in rows
    ]


def call(capsys, *argv: object) -> tuple[int, str]:
    r"""``llamafactory-wspo ARGV`` in this process: its exit code and its one line of error (or "")."""
    from llamafactory_wspo.cli import main

    code = main([str(arg) for arg in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 0 or (code == 2 and len(lines) == 1 and "error:" in lines[0]), (code, lines)
    return code, lines[0] if lines else ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["num_samples=5"], "--temperature > 0"),
        (["top_p=1.5", "temperature=0.7"], "--top_p"),
        (["infer_backend=vllm"], "vllm"),
        (["max_new_tokens=0"], "--max_new_tokens"),
        (["--temperature", "warm"], "--temperature"),
        (["--no_such_option", "1"], "--no_such_option"),
        (["infer_backend=transformers"], "infer_backend"),
    ],
)
def test_bad_arguments_fail_before_loading(capsys, tmp_path: Path, extra: list[str], message: str) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"prompt": "hello"}) + "\n")
    if "infer_backend=vllm" in extra and __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    out = tmp_path / "out.jsonl"
    code, error = call(
        capsys, "generate", f"model_name_or_path={tmp_path / 'no-such-model'}", "template=qwen",
        f"input_file={source}", f"output_file={out}", *extra,
    )  # fmt: skip
    assert code == 2 and message in error
    assert not out.exists()


def test_missing_inputs_are_named(capsys, assets: Path, tmp_path: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"question": "hello"}) + "\n")
    common = ["template=qwen", f"input_file={source}", f"output_file={tmp_path / 'o.jsonl'}"]
    assert "--model_name_or_path is required" in call(capsys, "generate", *common)[1]
    error = call(capsys, "generate", f"model_name_or_path={tmp_path}", *common)[1]
    assert "--prompt_key" in error and "question" in error
    error = call(capsys, "generate", f"model_name_or_path={tmp_path / 'a' / 'b'}", *common)[1]
    assert "--model_name_or_path" in error and "no such directory" in error

    # an existing output of other prompts (or another num_samples) is refused, not resumed
    source.write_text(json.dumps({"prompt": "hello"}) + "\n")
    (tmp_path / "o.jsonl").write_text(json.dumps({"instruction": "bye", "predict": "x", "label": None}) + "\n")
    error = call(capsys, "generate", f"model_name_or_path={assets / 'weak'}", *common)[1]
    assert "other prompts" in error and "overwrite=true" in error
