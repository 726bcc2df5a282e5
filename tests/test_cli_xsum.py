"""``llamafactory-wspo prepare-xsum`` and ``eval-xsum`` on tiny local XSUM-like files, run as commands."""

import json
import math
import os
import subprocess
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from helpers.cli import one_line_error, run_cli
from helpers.train import run_train

from llamafactory_wspo.cli import eval_xsum, prepare_xsum


PREPARE = "prepare-xsum"
EVALUATE = "eval-xsum"
INSTRUCTION = "Summarize the following news article in one sentence."  # as stated in the README
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}

# Documents and summaries in the tiny tokenizer's words, with newlines between "sentences".
RAW = {
    "train": [
        {"id": "101", "document": "the cat with the dog\nstory of a fox for the game", "summary": "cat dog fox"},
        {"id": "102", "document": "  red blue\n\ngreen yellow  ", "summary": " colors of a song "},
        {"id": "103", "document": "", "summary": "empty document"},
        {"id": "104", "document": "one two three four five six seven eight", "summary": "numbers"},
        {"id": "105", "document": "apple pear plum", "summary": ""},
        {"id": "106", "document": "hammer saw drill wrench", "summary": "tools for a class"},
    ],
    "validation": [{"id": "201", "document": "france spain italy", "summary": "countries of a trip"}],
    "test": [
        {"id": "301", "document": "owl eagle frog snake", "summary": "animals"},
        {"id": "302", "document": "lemon lime mango", "summary": "fruits"},
    ],
}


def run_script(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(command, *args, cwd=cwd, check=False, timeout=300)


@pytest.fixture()
def raw_dir(tmp_path) -> Path:
    r"""XSUM-like parquet files named after their splits."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, rows in RAW.items():
        pd.DataFrame(rows).to_parquet(raw / f"{split}.parquet")
    return raw


def read_rows(path: Path) -> list[dict]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(rows, list)
    return rows


def test_prepare_writes_alpaca_files_and_merges_dataset_info(raw_dir, tmp_path):
    out = tmp_path / "xsum"
    out.mkdir()
    stale = {"file_name": "old.json"}
    unrelated = {"file_name": "../other.json", "ranking": True}
    (out / "dataset_info.json").write_text(json.dumps({"other": unrelated, "xsum_train": stale}), encoding="utf-8")

    proc = run_script(
        PREPARE,
        "--dataset",
        str(raw_dir),
        "--output_dir",
        str(out),
        "--max_samples",
        "3",
        "--max_document_words",
        "6",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The rows with an empty document (103) or summary (105) are dropped and do not count towards max_samples.
    # Truncation keeps the first 6 words and the document's own line breaks; surrounding whitespace is stripped.
    expected_train = [
        ("101", "the cat with the dog\nstory", "cat dog fox"),
        ("102", "red blue\n\ngreen yellow", "colors of a song"),
        ("104", "one two three four five six", "numbers"),
    ]
    expected = {
        "train": expected_train,
        "validation": [("201", "france spain italy", "countries of a trip")],
        "test": [("301", "owl eagle frog snake", "animals"), ("302", "lemon lime mango", "fruits")],
    }
    for split, triples in expected.items():
        rows = read_rows(out / f"{split}.json")
        assert [tuple(row) for row in rows] == [("instruction", "input", "output", "id")] * len(triples)
        assert {row["instruction"] for row in rows} == {INSTRUCTION}
        assert [(row["id"], row["input"], row["output"]) for row in rows] == triples
    assert "train: 3 rows" in proc.stdout and "1 with an empty document or summary dropped" in proc.stdout

    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["other"] == unrelated  # untouched
    assert set(info) == {"other", "xsum_train", "xsum_validation", "xsum_test"}
    for split in ("train", "validation", "test"):
        assert info[f"xsum_{split}"] == {"file_name": f"{split}.json", "columns": COLUMNS}
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json", "test.json", "train.json", "validation.json"]

    assert prepare_xsum.INSTRUCTION == INSTRUCTION


def test_prepare_into_a_shared_dataset_info(raw_dir, tmp_path):
    r"""``--dataset_info`` elsewhere: file names relative to it, as in ``yaml_recipes/data``."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}), encoding="utf-8")
    proc = run_script(
        PREPARE,
        "--dataset",
        str(raw_dir),
        "--output_dir",
        "data/xsum",
        "--dataset_info",
        "data/dataset_info.json",
        "--splits",
        "validation,test",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((data_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == {
        "tiny": {"file_name": "tiny.json"},
        "xsum_validation": {"file_name": "xsum/validation.json", "columns": COLUMNS},
        "xsum_test": {"file_name": "xsum/test.json", "columns": COLUMNS},
    }
    assert not (data_dir / "xsum" / "train.json").exists()
    assert len(read_rows(data_dir / "xsum" / "test.json")) == 2


def test_prepare_from_one_json_file_and_its_errors(tmp_path):
    jsonl = tmp_path / "xsum_test.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in RAW["test"]), encoding="utf-8")
    out = tmp_path / "out"

    proc = run_script(PREPARE, "--dataset", str(jsonl), "--output_dir", str(out), cwd=tmp_path)
    one_line_error(proc, "--splits")  # one file, three splits asked for

    proc = run_script(PREPARE, "--dataset", str(jsonl), "--splits", "test", "--output_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [row["output"] for row in read_rows(out / "test.json")] == ["animals", "fruits"]
    assert set(json.loads((out / "dataset_info.json").read_text())) == {"xsum_test"}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"article": "a", "highlights": "b"}]), encoding="utf-8")
    proc = run_script(PREPARE, "--dataset", str(bad), "--splits", "test", "--output_dir", str(out), cwd=tmp_path)
    one_line_error(proc, "`document` and `summary`")

    proc = run_script(PREPARE, "--dataset", str(tmp_path / "missing.parquet"), cwd=tmp_path)
    one_line_error(proc, "no such file")

    proc = run_script(PREPARE, "--dataset", str(jsonl), "--splits", "test", "--max_document_words", "0", cwd=tmp_path)
    one_line_error(proc, "--max_document_words")


@pytest.mark.slow
def test_prepared_data_trains_through_llamafactory(raw_dir, assets, tmp_path):
    r"""The written files and entries load through LLaMA-Factory: one SFT step on xsum_train, xsum_validation as eval."""
    out = tmp_path / "xsum"
    proc = run_script(PREPARE, "--dataset", str(raw_dir), "--output_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = {
        "model_name_or_path": str(assets / "weak"),
        "stage": "sft",
        "do_train": True,
        "do_eval": True,
        "finetuning_type": "full",
        "dataset": "xsum_train",
        "eval_dataset": "xsum_validation",
        "dataset_dir": str(out),
        "template": "qwen",
        "cutoff_len": 128,
        "output_dir": str(tmp_path / "run" / "out"),
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "max_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_shuffling": True,
    }
    proc = run_train(config, tmp_path / "run")
    log = proc.stdout + proc.stderr
    # LLaMA-Factory prints the first tokenised example: the document in the prompt, the summary as the labels.
    prompt_end = "<|im_end|> <|im_start|> assistant"
    assert f". the cat with the dog story of a fox for the game {prompt_end} cat dog fox <|im_end|>" in log
    assert "labels:\ncat dog fox <|im_end|>" in log
    assert f". france spain italy {prompt_end} countries of a trip <|im_end|>" in log  # the eval example
    state = json.loads((tmp_path / "run" / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and any("eval_loss" in entry for entry in state["log_history"])


def test_evaluate_against_hand_computation(tmp_path):
    w25 = " ".join(f"w{i}" for i in range(25))
    lines = [
        {"prompt": "p1", "predict": "the cat sat", "label": "the cat lay on the mat"},
        {"prompt": "p2", "predict": "dogs are running in the park", "label": "dogs are running in the park"},
        {"prompt": "p3", "predict": "red blue green", "label": "one two three four"},
        {"prompt": "p4", "predict": [w25, ""], "label": w25},  # two samples, both scored against the label
    ]
    predictions = tmp_path / "generated_predictions.jsonl"
    predictions.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")

    proc = run_script(EVALUATE, str(predictions), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics == json.loads((tmp_path / "generated_predictions.metrics.json").read_text())

    # Word counts 3, 6, 3, 25, 0; reward for [20, 30]: 1 - 17/10, 1 - 14/10, 1 - 17/10, 1, 1 - 20/10.
    assert (metrics["num_prompts"], metrics["num_summaries"]) == (4, 5)
    assert (metrics["length_min"], metrics["length_max"]) == (20, 30)
    assert metrics["words_mean"] == pytest.approx(37 / 5)
    assert metrics["words_median"] == 3
    assert metrics["words_std"] == pytest.approx(math.sqrt((4.4**2 + 1.4**2 + 4.4**2 + 17.6**2 + 7.4**2) / 5))
    assert metrics["length_reward_mean"] == pytest.approx((-0.7 - 0.4 - 0.7 + 1.0 - 1.0) / 5)
    assert metrics["in_range_share"] == pytest.approx(1 / 5)
    # ROUGE F1: identical = 1, disjoint or empty = 0; "the cat sat" vs "the cat lay on the mat":
    # ROUGE-1 overlap {the, cat} -> P 2/3, R 2/6, F 4/9; ROUGE-2 overlap {the cat} -> P 1/2, R 1/5, F 2/7;
    # ROUGE-L LCS "the cat" -> F 4/9.
    assert metrics["rouge1"] == pytest.approx((4 / 9 + 1 + 0 + 1 + 0) / 5)
    assert metrics["rouge2"] == pytest.approx((2 / 7 + 1 + 0 + 1 + 0) / 5)
    assert metrics["rougeL"] == pytest.approx((4 / 9 + 1 + 0 + 1 + 0) / 5)

    # Another range, another output file: [2, 4] -> rewards 1, 1 - 2/2, 1, 1 - 21/2, 1 - 2/2.
    output = tmp_path / "m" / "range.json"
    proc = run_script(
        EVALUATE,
        str(predictions),
        "--length_min",
        "2",
        "--length_max",
        "4",
        "--output_file",
        str(output),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(output.read_text())
    assert metrics["length_reward_mean"] == pytest.approx((1 + 0 + 1 - 9.5 + 0) / 5)
    assert metrics["in_range_share"] == pytest.approx(2 / 5)


def test_evaluate_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"predict": "a b", "label": "a b"}) + "\n", encoding="utf-8")
    proc = run_script(EVALUATE, str(good), "--length_min", "5", "--length_max", "5", cwd=tmp_path)
    one_line_error(proc, "--length_min")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"predict": "a b", "label": "a b"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    proc = run_script(EVALUATE, str(bad), cwd=tmp_path)
    one_line_error(proc, "line 2", "`predict` and `label`")

    proc = run_script(EVALUATE, str(tmp_path / "none.jsonl"), cwd=tmp_path)
    one_line_error(proc, "no such file")


def test_evaluate_without_rouge_score(tmp_path):
    r"""Without rouge-score (a package on PYTHONPATH that fails to import shadows it): the length metrics as with it,
    no ROUGE keys, one line saying ROUGE was skipped, exit code 0."""
    predictions = tmp_path / "predictions.jsonl"
    lines = [{"predict": "the cat sat", "label": "the cat lay on the mat"}, {"predict": ["a b", "a"], "label": "a b"}]
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    blocked = tmp_path / "no_rouge"
    (blocked / "rouge_score").mkdir(parents=True)
    (blocked / "rouge_score" / "__init__.py").write_text('raise ImportError("rouge-score blocked by the test")\n')
    pythonpath = os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")]))

    with_rouge = run_script(EVALUATE, str(predictions), "--output_file", "with.json", cwd=tmp_path)
    assert with_rouge.returncode == 0, with_rouge.stderr[-3000:]
    assert "skipped" not in with_rouge.stderr
    metrics = json.loads(with_rouge.stdout)
    assert metrics["rouge1"] == pytest.approx((4 / 9 + 1 + 2 / 3) / 3)  # "a" vs "a b": P 1, R 1/2, F 2/3

    proc = run_cli(
        EVALUATE,
        predictions,
        "output_file=without.json",
        cwd=tmp_path,
        check=False,
        timeout=300,
        PYTHONPATH=pythonpath,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert skipped == [f"{eval_xsum.PROG}: {eval_xsum.ROUGE_SKIPPED}"], proc.stderr[-3000:]
    assert "pip install rouge-score" in skipped[0] and "Traceback" not in proc.stderr
    without = json.loads(proc.stdout)
    assert without == json.loads((tmp_path / "without.json").read_text())
    expected = {key: value for key, value in metrics.items() if key not in eval_xsum.ROUGE_TYPES}
    assert without == expected
    assert (without["num_prompts"], without["num_summaries"], without["words_mean"]) == (2, 3, 2.0)


def test_paper_extra_brings_rouge_and_deepspeed():
    r"""The `paper` extra holds the `eval` extra (rouge-score, for eval-xsum's ROUGE) and the `deepspeed` extra (every
    shipped recipe sets `deepspeed:`) with the same pins. That it resolves next to llamafactory==0.9.5 is .ci/run's
    dry run."""
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert {"deepspeed", "eval", "paper"} <= extras.keys()
    assert set(extras["deepspeed"]) | set(extras["eval"]) <= set(extras["paper"])
    assert not any(requirement.startswith("vllm") for requirement in extras["paper"])  # GPU only: its own extra
