"""``llamafactory-wspo build-hybrid``: the hybrid pairing rule with a fake judge on 127.0.0.1 (garbage, 500s and
429s on cue, turning bad mid-run, down, killed mid-run) and with a tiny reward model; resumed runs equal
uninterrupted ones; a reply without a score on the 1-6 scale is never stored as a fall-back."""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_assets
from helpers.cli import cli_command, one_line_error, qwen_prompt_ids, read_jsonl, run_cli, write_jsonl
from helpers.fake_judge import FakeJudge, chat_reply, judge_score
from helpers.train import base_env
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llamafactory_wspo.cli import build_hybrid


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
        {"instruction": "prompt D", "predict": ["a b c d e"]},  # 5, nothing lower: fallback
    ]
    write_jsonl(tmp_path / "samples.0.jsonl", rows[0::2])  # two shards of `generate`
    write_jsonl(tmp_path / "samples.1.jsonl", rows[1::2])
    samples = tmp_path / "samples.*.jsonl"
    outside = write_jsonl(tmp_path / "outside.jsonl", [{"instruction": "prompt A", "output": "x y z w v u"}])  # 6
    out_dir = tmp_path / "data"
    out_dir.mkdir()
    (out_dir / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))

    run_cli(
        "build-hybrid", f"pairs={pairs}", f"samples_file={samples}", f"outside_file={outside}",
        f"scorer=openai:{judge.url}#judge-model", f"output_dir={out_dir}", "name=hybrid", "seed=0",
        NO_PROXY="127.0.0.1",
    )  # fmt: skip

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

    info = json.loads((out_dir / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "other.json"}
    assert info["hybrid"] == build_hybrid.dataset_entry("hybrid")
    assert len(judge.requests) == 3 + 1 + 2 + 2 + 1

    # a second run finds every prompt done: no judge call, the same file
    before = (out_dir / "hybrid.jsonl").read_text()
    run_cli(
        "build-hybrid", f"pairs={pairs}", f"samples_file={samples}", f"outside_file={outside}",
        f"scorer=openai:{judge.url}#judge-model", f"output_dir={out_dir}", "name=hybrid", NO_PROXY="127.0.0.1",
    )  # fmt: skip
    assert len(judge.requests) == 9 and (out_dir / "hybrid.jsonl").read_text() == before


def failure_cases(count: int) -> tuple[list[dict], list[dict]]:
    r"""Pairs, and samples that make the fake judge return 500s and 429s before answering."""
    pairs = [
        {"instruction": f"prompt {i}", "chosen": f"uf chosen {i}", "rejected": f"uf rejected {i}"}
        for i in range(count)
    ]
    samples = [
        {
            "instruction": f"prompt {i}",
            "predict": [f"w{i} " * (1 + i % 6), f"flaky500 a b c d {i}", f"flaky429 {i}"],
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
    assert len(expected) == 30 and {row["source"] for row in expected} == {"hybrid"}  # 500s, 429s retried

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
    assert "left unjudged" in stderr and "Run the same command again" in stderr
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

    # the samples file continues only with the sampling options it was started with (refused before loading)
    proc = run_cli("build-hybrid", *common, "name=other", "temperature=0.9", check=False)
    one_line_error(proc, "--temperature (0.7 then, 0.9 now)", str(tmp_path / "samples.jsonl"))

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


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("Relevant and accurate.\nScore: 5", 5.0),
        ("Score: 1", 1.0),
        ("Score:6", 6.0),
        ("Score: **5**", 5.0),  # markdown, as judges write it
        ("**Score:** 4", 4.0),
        ("**Score: 3**", 3.0),
        ("Score: 5.", 5.0),
        ("score: 2", 2.0),
        ("Score: 5/6", 5.0),  # the paper's scale, written out
        ("Score: 5 out of 6", 5.0),
        ("good.\nScore: 7\nScore: **4**", 4.0),  # the last Score: counts
        ("Score: 6.5", None),  # off the integer scale: not 6
        ("Score: 5/10", None),  # another scale: not 5
        ("Score: 5 out of 10", None),
        ("Score: 5.0", None),
        ("Score: 7", None),
        ("Score: 0", None),
        ("Score: 10", None),
        ("Score: -3", None),
        ("Score: five", None),
        ("Score: 4 (good)", None),
        ("Score: 4\nScore: 6.5", None),  # the last one is off the scale: no earlier one stands in
        ("Score:", None),
        ("No grade.", None),
        ("", None),
        (None, None),
    ],
)
def test_judge_score_parser(answer: str | None, score: float | None) -> None:
    from llamafactory_wspo.cli.judge import parse_judge_score, reply_score

    assert parse_judge_score(answer) == score
    if answer is not None:
        assert reply_score(chat_reply(answer)) == score


def test_reply_bodies_without_a_chat_answer() -> None:
    from llamafactory_wspo.cli.judge import reply_score

    for body in (b"<html>", b'{"choices": []}', b'{"object": "error", "message": "x"}', b'{"choices": [{}]}'):
        assert reply_score(body) is None


def hybrid_case(tmp_path: Path, count: int) -> list[dict]:
    r"""``count`` prompts of two samples each, scored 6 and 1 by the fake judge: each one a hybrid pair once judged."""
    pairs = [{"instruction": f"prompt {i}", "chosen": f"uf chosen {i}", "rejected": f"uf rejected {i}"} for i in
             range(count)]  # fmt: skip
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    samples = [{"instruction": f"prompt {i}", "predict": [f"best{i} b c d e f", f"poor{i}"]} for i in range(count)]
    write_jsonl(tmp_path / "samples.jsonl", samples)
    return [
        {
            "instruction": f"prompt {i}", "input": "", "chosen": f"best{i} b c d e f", "rejected": f"poor{i}",
            "source": "hybrid", "chosen_score": 6.0, "rejected_score": 1.0, "chosen_origin": "policy",
            "prompt_index": i,
        }
        for i in range(count)
    ]  # fmt: skip


def build_in_process(capsys, monkeypatch, tmp_path: Path, url: str, *extra: str) -> tuple[int, str, list[str]]:
    r"""``build-hybrid`` in this process: its exit code, stdout and non-empty stderr lines (no progress bars)."""
    from llamafactory_wspo.cli import main

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    code = main(["build-hybrid", *builder_args(tmp_path, url, "hybrid", *extra)])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("judge:")]
    return code, captured.out, lines


@pytest.mark.parametrize(
    "broken_reply",
    [
        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        b'{"object": "error", "message": "The server is overloaded", "type": "ServiceUnavailableError"}',
        chat_reply("Accurate and complete.\nScore: 6.5"),
        chat_reply("Middling.\nScore: 5/10"),
    ],
    ids=["html", "error-object", "6.5", "5/10"],
)
def test_replies_without_a_score_are_retried_never_stored(capsys, monkeypatch, tmp_path: Path, broken_reply) -> None:
    r"""A judge turning bad after 10 replies: the prompts it did not score are left unjudged (exit 1, counted, no
    dataset_info entry), never stored with their fall-back pair; a healthy rerun judges exactly those."""
    expected = hybrid_case(tmp_path, 12)
    out = tmp_path / "out"
    judge = FakeJudge(broken_after=10, broken_reply=broken_reply)
    try:
        code, _, lines = build_in_process(capsys, monkeypatch, tmp_path, judge.url, "judge_concurrency=2")
    finally:
        judge.stop()
    stored = read_jsonl(out / "hybrid.jsonl")
    assert code == 1 and 4 <= len(stored) <= 5, (code, len(stored), lines)
    assert as_set(stored) <= as_set(expected), "a stored prompt is a judged hybrid pair, never a fall-back"
    left = 12 - len(stored)
    assert len(lines) == 1 and f"error: {left} of 12 prompts are left unjudged ({left} without a score" in lines[0]
    assert judge.url in lines[0] and "dataset_info.json" in lines[0], lines[0]
    assert not (out / "dataset_info.json").exists()

    judge = FakeJudge()
    try:
        code, _, lines = build_in_process(capsys, monkeypatch, tmp_path, judge.url)
    finally:
        judge.stop()
    assert code == 0, lines
    unjudged = {row["instruction"] for row in expected} - {row["instruction"] for row in stored}
    assert sorted(request for request, _ in judge.requests) == sorted(2 * list(unjudged))  # exactly those, once
    assert by_prompt(read_jsonl(out / "hybrid.jsonl")) == expected
    assert json.loads((out / "dataset_info.json").read_text()) == {"hybrid": build_hybrid.dataset_entry("hybrid")}


def test_rows_an_earlier_version_stored_without_scores_are_judged_again(capsys, monkeypatch, tmp_path: Path) -> None:
    expected = hybrid_case(tmp_path, 3)
    legacy = dict(expected[1], chosen="uf chosen 1", rejected="uf rejected 1", source="ultrafeedback")
    legacy.update(chosen_score=None, rejected_score=None, chosen_origin=None, failed_judgments=1)
    (tmp_path / "out").mkdir()
    write_jsonl(tmp_path / "out" / "hybrid.jsonl", [dict(expected[0], failed_judgments=0), legacy])
    judge = FakeJudge()
    try:
        code, stdout, lines = build_in_process(capsys, monkeypatch, tmp_path, judge.url)
    finally:
        judge.stop()
    assert code == 0, lines
    assert "stored with judgments without a score, judged again: 1" in stdout
    assert sorted(request for request, _ in judge.requests) == ["prompt 1"] * 2 + ["prompt 2"] * 2
    rows = by_prompt(read_jsonl(tmp_path / "out" / "hybrid.jsonl"))
    assert rows == [dict(expected[0], failed_judgments=0), *expected[1:]]


def test_judge_down_names_the_url_and_the_connection_error(capsys, monkeypatch, tmp_path: Path) -> None:
    r"""Connection refused: one line naming the URL and the error; no new prompt starts once a call has failed
    every retry (2 prompts in flight x 2 candidates x 2 attempts, not 12 prompts' worth)."""
    hybrid_case(tmp_path, 12)
    judge = FakeJudge()
    judge.stop()  # nothing listens on its port now
    code, stdout, lines = build_in_process(
        capsys, monkeypatch, tmp_path, judge.url, "judge_concurrency=2", "judge_max_retries=1"
    )
    assert code == 1 and len(lines) == 1, (code, lines)
    assert "error: 12 of 12 prompts are left unjudged" in lines[0]
    assert f"{judge.url}/chat/completions" in lines[0] and "Connection refused" in lines[0], lines[0]
    calls = int(stdout.split("judge: ")[1].split(" calls")[0])
    assert calls <= 2 * 2 * 2, stdout
    assert not (tmp_path / "out" / "dataset_info.json").exists()
