"""``llamafactory-wspo build-hybrid``: the hybrid pairing rule with a fake judge on 127.0.0.1 (garbage, 500s and
429s on cue, killed mid-run) and with a tiny reward model; resumed runs equal uninterrupted ones."""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.cli import cli_command, qwen_prompt_ids, read_jsonl, run_cli, write_jsonl
from helpers.fake_judge import FakeJudge, judge_score
from helpers.train import base_env
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llamafactory_wspo.cli import build_hybrid
from llamafactory_wspo.extras import tiny_assets


PAIRS = [
    {"instruction": f"prompt {name}", "chosen": f"uf chosen {name}", "rejected": f"uf rejected {name}"}
    for name in "ABCDE"
]


@pytest.fixture
def judge():
    server = FakeJudge()
    yield server
    server.stop()


def by_prompt(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["prompt_index"])


def as_set(rows: list[dict]) -> set[str]:
    return {json.dumps(row, sort_keys=True) for row in rows}


def test_judge_scores_follow_the_hybrid_rule(judge: FakeJudge, tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    rows = [
        {"instruction": "prompt A", "predict": ["a b c d e", "a", "a b c"]},  # 5, 1, 3
        {"instruction": "prompt B", "predict": ["a b", "a b c"]},  # best 3 < 5: fallback
        {"instruction": "prompt C", "predict": ["a b c d e", "p q r s t"]},  # 5, 5: nothing 1 lower
        {"instruction": "prompt D", "predict": ["noscore a b c d e f", "a b c d e"]},  # unscored, 5
    ]
    write_jsonl(tmp_path / "samples.0.jsonl", rows[0::2])  # two shards of `generate`
    write_jsonl(tmp_path / "samples.1.jsonl", rows[1::2])
    samples = tmp_path / "samples.*.jsonl"
    outside = write_jsonl(tmp_path / "outside.jsonl", [{"instruction": "prompt A", "output": "x y z w v u"}])  # 6
    out_dir = tmp_path / "data"
    out_dir.mkdir()
    (out_dir / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))

    proc = run_cli(
        "build-hybrid", f"pairs={pairs}", f"samples_file={samples}", f"outside_file={outside}",
        f"scorer=openai:{judge.url}#judge-model", f"output_dir={out_dir}", "name=hybrid", "seed=0",
        NO_PROXY="127.0.0.1",
    )  # fmt: skip
    assert "1 judgments gave no score" in proc.stderr

    rows = by_prompt(read_jsonl(out_dir / "hybrid.jsonl"))
    assert [row["instruction"] for row in rows] == [pair["instruction"] for pair in PAIRS]
    first = rows[0]
    assert (first["source"], first["chosen"], first["chosen_score"], first["chosen_origin"]) == (
        "hybrid", "x y z w v u", 6.0, "outside",
    )  # fmt: skip
    assert first["rejected"] in ("a b c d e", "a", "a b c")
    assert first["rejected_score"] == judge_score(first["rejected"])
    for row, pair in zip(rows[1:], PAIRS[1:]):
        assert (row["source"], row["chosen"], row["rejected"]) == ("ultrafeedback", pair["chosen"], pair["rejected"])
    assert [row["failed_judgments"] for row in rows] == [0, 0, 0, 1, 0]

    info = json.loads((out_dir / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "other.json"}
    assert info["hybrid"] == build_hybrid.dataset_entry("hybrid")
    assert len(judge.requests) == 3 + 1 + 2 + 2 + 2

    # a second run finds every prompt done: no judge call, the same file
    before = (out_dir / "hybrid.jsonl").read_text()
    run_cli(
        "build-hybrid", f"pairs={pairs}", f"samples_file={samples}", f"outside_file={outside}",
        f"scorer=openai:{judge.url}#judge-model", f"output_dir={out_dir}", "name=hybrid", NO_PROXY="127.0.0.1",
    )  # fmt: skip
    assert len(judge.requests) == 10 and (out_dir / "hybrid.jsonl").read_text() == before


def failure_cases(count: int) -> tuple[list[dict], list[dict]]:
    r"""Pairs, and samples that make the fake judge return garbage, no choices, no score, 500s and 429s."""
    pairs = [
        {"instruction": f"prompt {i}", "chosen": f"uf chosen {i}", "rejected": f"uf rejected {i}"}
        for i in range(count)
    ]
    samples = [
        {
            "instruction": f"prompt {i}",
            "predict": [
                f"w{i} " * (1 + i % 6),
                f"garbage {i}" if i % 3 == 0 else f"nochoices {i}" if i % 3 == 1 else f"noscore {i}",
                f"flaky500 a b c d {i}",
                f"flaky429 {i}",
            ],
        }
        for i in range(count)
    ]
    return pairs, samples


def builder_args(tmp_path: Path, judge_url: str, name: str, *extra: str) -> list[str]:
    return [
        f"pairs={tmp_path / 'pairs.jsonl'}", f"samples_file={tmp_path / 'samples.jsonl'}",
        f"scorer=openai:{judge_url}#judge", f"output_dir={tmp_path / 'out'}", f"name={name}", "judge_backoff=0.01",
        "judge_concurrency=3", *extra,
    ]  # fmt: skip


def start_builder(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command("build-hybrid", *args),
        env=base_env(NO_PROXY="127.0.0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_rows(proc: subprocess.Popen, path: Path, rows: int) -> None:
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if path.is_file() and path.read_text().count("\n") >= rows:
            return
        time.sleep(0.01)
    raise AssertionError(f"no {rows} rows in {path} (exit {proc.poll()})")


@pytest.mark.slow
def test_killed_builder_and_judge_resume_to_the_uninterrupted_output(tmp_path: Path) -> None:
    pairs, samples = failure_cases(30)
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "samples.jsonl", samples)
    out = tmp_path / "out"

    judge = FakeJudge()
    run_cli("build-hybrid", *builder_args(tmp_path, judge.url, "whole"), NO_PROXY="127.0.0.1")
    judge.stop()
    expected = read_jsonl(out / "whole.jsonl")
    assert len(expected) == 30 and {row["failed_judgments"] for row in expected} == {1}  # garbage, no choices/score
    assert {row["source"] for row in expected} == {"hybrid"}  # 500s and 429s were retried to an answer

    # 1. The builder is killed (SIGKILL) mid-run; the next run resumes without judging a stored prompt again.
    judge = FakeJudge(delay=0.05)
    proc = start_builder(builder_args(tmp_path, judge.url, "killed"))
    wait_for_rows(proc, out / "killed.jsonl", 5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = read_jsonl(out / "killed.jsonl")
    assert 5 <= len(stored) < 30, "the kill must land mid-run"
    with open(out / "killed.jsonl", "a") as handle:  # a write torn by the kill
        handle.write('{"instruction": "prompt')
    assert "killed" not in json.loads((out / "dataset_info.json").read_text())
    judge.requests.clear()
    run_cli("build-hybrid", *builder_args(tmp_path, judge.url, "killed"), NO_PROXY="127.0.0.1")
    judge.stop()
    assert as_set(read_jsonl(out / "killed.jsonl")) == as_set(expected)
    assert not {request for request, _ in judge.requests} & {row["instruction"] for row in stored}

    # 2. The judge is killed mid-run: its prompts fail after the retries, the others go on; exit code 1; then the
    # judge comes back on the same port and the next run finishes.
    judge = FakeJudge(delay=0.05)
    port = judge.port
    proc = start_builder(builder_args(tmp_path, judge.url, "judge_down", "judge_max_retries=2"))
    wait_for_rows(proc, out / "judge_down.jsonl", 5)
    judge.stop()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-3000:]
    assert "could not be scored" in stderr and "run the same command again" in stderr
    partial = read_jsonl(out / "judge_down.jsonl")
    assert 5 <= len(partial) < 30 and as_set(partial) <= as_set(expected)
    assert "judge_down" not in json.loads((out / "dataset_info.json").read_text())
    judge = FakeJudge(port=port)
    run_cli("build-hybrid", *builder_args(tmp_path, judge.url, "judge_down"), NO_PROXY="127.0.0.1")
    judge.stop()
    assert as_set(read_jsonl(out / "judge_down.jsonl")) == as_set(expected)
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["judge_down"] == build_hybrid.dataset_entry("judge_down")


def rm_reference_scores(rm_dir: Path, items: list[tuple[str, str]]) -> list[float]:
    r"""Reward of each (instruction, response) one at a time, formatted by hand in Qwen's chat format."""
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    scores = []
    for instruction, response in items:
        ids = qwen_prompt_ids(tokenizer, instruction)
        ids = ids + tokenizer(f"{response}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            scores.append(float(model(torch.tensor([ids])).logits[0, 0]))
    return scores


@pytest.mark.slow
def test_reward_model_scorer_with_policy_sampling(assets: Path, tmp_path: Path) -> None:
    rm_dir = tmp_path / "rm"
    tiny_assets.build_reward_model(rm_dir, assets / "tokenizer", seed=3)
    data = json.loads((assets / "data" / "tiny_pairs.json").read_text())[:6]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", data)
    out_dir = tmp_path / "data"
    common = [
        f"pairs={pairs}", f"model_name_or_path={assets / 'weak'}", "template=qwen", "num_samples=4",
        "max_new_tokens=6", "infer_backend=huggingface", f"scorer=rm:{rm_dir}", "scorer_template=qwen",
        f"output_dir={out_dir}", "seed=0", f"samples_file={tmp_path / 'samples.jsonl'}",
    ]  # fmt: skip
    # a threshold no sample reaches: everything falls back (the samples are generated once, then reused)
    proc = run_cli("build-hybrid", *common, "name=none", "chosen_min=1e9")
    assert "reward model on cpu (float32)" in proc.stdout
    assert len(read_jsonl(tmp_path / "samples.jsonl")) == len(data)
    fallback = by_prompt(read_jsonl(out_dir / "none.jsonl"))
    assert [(row["chosen"], row["rejected"], row["source"]) for row in fallback] == [
        (example["chosen"], example["rejected"], "ultrafeedback") for example in data
    ]

    # a threshold every prompt reaches: every prompt is paired (4 samples, seeded per prompt: a resumed file)
    run_cli("build-hybrid", *common, "name=all", "chosen_min=-1e9", "margin=1e-6")
    rows = by_prompt(read_jsonl(out_dir / "all.jsonl"))
    assert len(rows) == len(data)
    paired = [row for row in rows if row["source"] == "hybrid"]
    assert len(paired) >= len(data) - 1, "random samples of 4 should rarely tie"
    instructions = [
        example["instruction"] + (f"\n{example['input']}" if example.get("input") else "") for example in data
    ]
    reference = rm_reference_scores(
        rm_dir,
        [(instruction, row[key]) for instruction, row in zip(instructions, rows) for key in ("chosen", "rejected")],
    )
    for index, row in enumerate(rows):
        if row["source"] != "hybrid":
            continue
        assert row["chosen_score"] == pytest.approx(reference[2 * index], abs=1e-4)
        assert row["rejected_score"] == pytest.approx(reference[2 * index + 1], abs=1e-4)
        assert row["chosen_score"] > row["rejected_score"] and row["chosen_origin"] == "policy"

    # LLaMA-Factory loads the written data set through the written dataset_info entry
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    loaded = _get_merged_dataset(
        ["all"],
        ModelArguments(model_name_or_path=str(assets / "weak")),
        DataArguments(dataset="all", dataset_dir=str(out_dir)),
        Seq2SeqTrainingArguments(output_dir=str(tmp_path / "t"), report_to=[]),
        stage="rm",
    )
    stored = read_jsonl(out_dir / "all.jsonl")  # file order
    assert [example["_response"][0]["content"] for example in loaded] == [row["chosen"] for row in stored]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["scorer=judge"], "--scorer"),
        (["scorer=openai:http://h/v1#j", "model_name_or_path=m"], "--template"),
        (["scorer=openai:http://h/v1#j", "samples_file=missing.jsonl"], "--samples_file"),
        (["scorer=openai:http://h/v1#j", "model_name_or_path=m", "template=qwen", "temperature=0"], "--temperature"),
        (["scorer=openai:http://h/v1#j", "samples_file=pairs.jsonl", "judge_concurrency=0"], "--judge_concurrency"),
        (["scorer=openai:http://h/v1#j", "samples_file=pairs.jsonl", "name=dataset_info"], "dataset_info"),
        (["scorer=openai:http://h/v1#j", "samples_file=pairs.jsonl", "name=taken"], "another data set"),
        (["scorer=openai:http://h/v1#j", "samples_file=pairs.jsonl", "name=reads"], "the data set `other`"),
    ],
)
def test_bad_arguments_and_taken_names(capsys, monkeypatch, tmp_path: Path, extra: list[str], message: str) -> None:
    from llamafactory_wspo.cli import main

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    info = {"taken": {"hf_hub_url": "someone/else", "ranking": True}, "other": {"file_name": "reads.jsonl"}}
    (out_dir / "dataset_info.json").write_text(json.dumps(info))
    code = main(["build-hybrid", "pairs=pairs.jsonl", f"output_dir={out_dir}", "name=h", *extra])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert sorted(path.name for path in out_dir.iterdir()) == ["dataset_info.json"]
    assert json.loads((out_dir / "dataset_info.json").read_text()) == info


def test_pairing_rule_and_per_prompt_draws() -> None:
    def cands(*scores):
        return [build_hybrid.Candidate(f"t{i}", "policy", score) for i, score in enumerate(scores)]

    rng = random.Random(0)
    assert build_hybrid.choose_pair(cands(4, 3, None), 5, 1, rng) is None
    assert build_hybrid.choose_pair(cands(6, 6), 5, 1, rng) is None
    chosen, rejected = build_hybrid.choose_pair(cands(5, 6, 4.5, 2), 5, 1, rng)
    assert chosen.text == "t1" and rejected.text in ("t0", "t3")

    # the rejected output is a random draw, fixed by the seed and the prompt's index (not by the order of work)
    pair = {"instruction": "q", "chosen": "c", "rejected": "r"}
    candidates = cands(None, None, None, None)
    scores = [6.0, 1.0, 2.0, 3.0]
    draws = {build_hybrid.make_row(3, pair, candidates, scores, 5, 1, seed)["rejected"] for seed in range(40)}
    assert draws == {"t1", "t2", "t3"}
    assert build_hybrid.make_row(3, pair, candidates, scores, 5, 1, 7) == build_hybrid.make_row(
        3, pair, candidates, scores, 5, 1, 7
    )

    from llamafactory_wspo.cli.judge import parse_judge_score, reply_score

    assert parse_judge_score("good.\nScore: 7\nScore: **4**") == 4.0
    assert parse_judge_score("no score") is None
    assert reply_score(b"<html>") is None and reply_score(b'{"choices": []}') is None
    assert reply_score(json.dumps({"choices": [{"message": {"content": "Score: 5"}}]}).encode()) == 5.0
