"""``llamafactory-wspo generate`` and ``export-alpaca-eval`` on a tiny model, checked against independent
computations; a generation killed mid-run and resumed writes what an uninterrupted one does."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.cli import cli_command, one_line_error, qwen_prompt_ids, read_jsonl, run_cli, write_jsonl
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


def generate_in_process(capsys, options: dict[str, object], **changes: object) -> tuple[int, str, list[str]]:
    r"""``generate`` in this process with ``options`` (``changes`` over them): exit code, stdout, stderr lines."""
    from llamafactory_wspo.cli import main

    argv = [f"{key}={value}" for key, value in {**options, **changes}.items()]
    code = main(["generate", *argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("generate:")]
    return code, captured.out, lines


def test_resumes_only_with_the_options_it_was_started_with(capsys, assets: Path, tmp_path: Path) -> None:
    r"""A run stopped after one row (max_samples=1) and continued: with any option that changes the rows, one error
    line naming it (before the model loads, the file untouched); with the same options it resumes; a file from
    before the options record resumes with one warning."""
    model = tmp_path / "model"  # a copy, whose weight file this test touches
    shutil.copytree(assets / "weak", model)
    source = tmp_path / "prompts.jsonl"
    write_jsonl(source, [{"instruction": word} for word in ("list animals", "name colors", "tell fruits")])
    out = tmp_path / "out.jsonl"
    record_path = tmp_path / "out.jsonl.options.json"
    options = {
        "model_name_or_path": model, "template": "qwen", "input_file": source, "output_file": out,
        "temperature": 0.7, "seed": 3, "max_new_tokens": 4, "infer_backend": "huggingface",
    }  # fmt: skip
    code, _, lines = generate_in_process(capsys, options, max_samples=1)
    assert code == 0 and len(read_jsonl(out)) == 1, lines
    first = out.read_text()
    record = record_path.read_text() if record_path.is_file() else None

    weights = model / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # new weights written in place
    changed = {
        "temperature": (1.0, "--temperature (0.7 then, 1.0 now)"),
        "template": ("llama3", "--template (qwen then, llama3 now)"),
        "max_new_tokens": (5, "--max_new_tokens (4 then, 5 now)"),
        "seed": (4, "--seed (3 then, 4 now)"),
        "top_p": (0.9, "--top_p (1.0 then, 0.9 now)"),
        "system": ("Be brief.", "--system (none then, Be brief. now)"),
        "model_name_or_path": (assets / "weak_aligned", f"({model.resolve()} then, {assets / 'weak_aligned'} now)"),
        "": (None, f"--model_name_or_path (the files of {model.resolve()} changed since: model.safetensors)"),
    }
    for name, (value, fragment) in changed.items():
        code, _, lines = generate_in_process(capsys, options, max_samples=2, **({name: value} if name else {}))
        assert code == 2 and len(lines) == 1 and fragment in lines[0], (name, code, lines)
        assert f"another --output_file, or delete {out}" in lines[0] and "overwrite=true" in lines[0]
        assert out.read_text() == first and record_path.read_text() == record
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    code, stdout, lines = generate_in_process(capsys, options, max_samples=2)  # the same options: resumed
    assert code == 0 and "1 of 2 prompts already done, resuming" in stdout, lines
    assert out.read_text().startswith(first) and len(read_jsonl(out)) == 2

    record_path.unlink()  # a file written before the options record existed
    code, stdout, lines = generate_in_process(capsys, options, max_samples=3)
    warnings = [line for line in lines if "warning:" in line]
    assert code == 0 and len(warnings) == 1 and "cannot be checked" in warnings[0], lines
    assert "2 of 3 prompts already done, resuming" in stdout and len(read_jsonl(out)) == 3


def test_options_record_holds_what_determines_the_output(monkeypatch, tmp_path: Path) -> None:
    from llamafactory_wspo.cli import generate

    def record(**changes: object) -> dict:
        values = {"model_name_or_path": "Qwen/Qwen2-7B", "template": "qwen", "output_file": "o.jsonl", **changes}
        return generate.output_options(generate.GenerateArguments(**values))

    greedy = record()
    assert greedy["model_name_or_path"] == {"hub_id": "Qwen/Qwen2-7B"}  # a hub id by its name
    # greedy decoding uses neither top_p nor the seed; batch size and shards leave every row as it is
    assert generate.options_mismatch(greedy, record(seed=7, top_p=0.5, batch_size=3, num_shards=2)) == []
    assert generate.options_mismatch(record(temperature=0.7), record(temperature=0.7, seed=7)) == [
        "--seed (42 then, 7 now)"
    ]
    assert generate.options_mismatch(greedy, record(model_name_or_path="Qwen/Qwen2-1.5B")) == [
        "--model_name_or_path (Qwen/Qwen2-7B then, Qwen/Qwen2-1.5B now)"
    ]
    # a key a later version adds (say `benchmark`): records written before it stand for the value it declares
    monkeypatch.setitem(generate.OPTIONS_ADDED, "benchmark", None)
    assert generate.options_mismatch(greedy, {**greedy, "benchmark": None}) == []
    assert generate.options_mismatch(greedy, {**greedy, "benchmark": "alpaca_eval"}) == [
        "--benchmark (none then, alpaca_eval now)"
    ]
