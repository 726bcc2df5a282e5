"""scripts/generate.py and scripts/to_alpaca_eval.py on a tiny model, checked against independent computations."""

import json
from pathlib import Path

import pytest
import torch
from helpers.scripts import qwen_prompt_ids, read_jsonl, run_script
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
    run_script(
        "generate.py", "--model", assets / "weak", "--template", "qwen", "--input", source,
        "--output", out, "--max_new_tokens", 8, "--batch_size", 2, "--backend", "transformers",
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


@pytest.mark.slow
def test_sampling_dataset_and_alpaca_eval(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples.jsonl"
    run_script(
        "generate.py", "--model", assets / "weak", "--template", "qwen", "--dataset", "tiny_sft_eval",
        "--dataset_dir", assets / "data", "--max_samples", 4, "--num_samples", 3, "--temperature", 1.0,
        "--top_p", 0.95, "--max_new_tokens", 6, "--output", out, "--seed", 3,
    )  # fmt: skip
    rows = read_jsonl(out)
    data = json.loads((assets / "data" / "tiny_sft_eval.json").read_text())[:4]
    assert [row["label"] for row in rows] == [example["output"] for example in data]
    assert [row["instruction"] for row in rows] == [
        example["instruction"] + (f"\n{example['input']}" if example.get("input") else "") for example in data
    ]
    assert all(isinstance(row["predict"], list) and len(row["predict"]) == 3 for row in rows)
    assert len({sample for row in rows for sample in row["predict"]}) > 4, "sampling gave identical outputs"

    again = tmp_path / "again.jsonl"
    run_script(
        "generate.py", "--model", assets / "weak", "--template", "qwen", "--dataset", "tiny_sft_eval",
        "--dataset_dir", assets / "data", "--max_samples", 4, "--num_samples", 3, "--temperature", 1.0,
        "--top_p", 0.95, "--max_new_tokens", 6, "--output", again, "--seed", 3,
    )  # fmt: skip
    assert read_jsonl(again) == rows, "the same seed must give the same samples"

    alpaca = tmp_path / "alpaca_eval.json"
    proc = run_script("to_alpaca_eval.py", out, alpaca, check=False)
    assert proc.returncode == 2 and "--sample_index" in proc.stderr and not alpaca.exists()
    run_script("to_alpaca_eval.py", out, alpaca, "--sample_index", 1, "--generator", "tiny")
    converted = json.loads(alpaca.read_text())
    assert converted == [
        {"instruction": row["instruction"], "output": row["predict"][1], "generator": "tiny"} for row in rows
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num_samples", "5"], "--temperature > 0"),
        (["--top_p", "1.5", "--temperature", "0.7"], "--top_p"),
        (["--backend", "vllm"], "vllm"),
        (["--max_new_tokens", "0"], "--max_new_tokens"),
    ],
)
def test_bad_arguments_fail_before_loading(tmp_path: Path, extra: list[str], message: str) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"prompt": "hello"}) + "\n")
    if "vllm" in extra and __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    out = tmp_path / "out.jsonl"
    proc = run_script(
        "generate.py", "--model", tmp_path / "no-such-model", "--template", "qwen", "--input", source,
        "--output", out, *extra, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_missing_prompt_field_is_named(tmp_path: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"question": "hello"}) + "\n")
    proc = run_script(
        "generate.py", "--model", tmp_path / "m", "--template", "qwen", "--input", source,
        "--output", tmp_path / "o.jsonl", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--prompt_key" in proc.stderr
