"""scripts/build_hybrid_data.py: the hybrid pairing rule with a local judge server and with a tiny reward model."""

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from helpers.scripts import qwen_prompt_ids, run_script, script_module
from helpers.train import ROOT
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llamafactory_wspo.extras import tiny_assets


def judge_score(response: str) -> int | None:
    r"""The fake judge: one point per word (at most 6); no score for a response containing ``nonsense``."""
    return None if "nonsense" in response else min(6, len(response.split()))


class JudgeHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        JudgeHandler.requests.append({"path": self.path, **body})
        prompt = body["messages"][0]["content"]
        response = prompt.split("[Assistant answer]\n", 1)[1].split("\n\nExplain", 1)[0]
        score = judge_score(response)
        answer = "I cannot grade this." if score is None else f"Reasonable answer.\nScore: {score}"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    JudgeHandler.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


PAIRS = [
    {"instruction": f"prompt {name}", "chosen": f"uf chosen {name}", "rejected": f"uf rejected {name}"}
    for name in "ABCDE"
]


def test_judge_scorer_follows_the_hybrid_rule(judge_url: str, tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    samples = write_jsonl(
        tmp_path / "samples.jsonl",
        [
            {"instruction": "prompt A", "predict": ["a b c d e", "a", "a b c"]},  # 5, 1, 3
            {"instruction": "prompt B", "predict": ["a b", "a b c"]},  # best 3 < 5: fallback
            {"instruction": "prompt C", "predict": ["a b c d e", "p q r s t"]},  # 5, 5: nothing 1 lower
            {"instruction": "prompt D", "predict": ["nonsense a b c d e f", "a b c d e"]},  # unscored, 5
        ],
    )
    outside = write_jsonl(tmp_path / "outside.jsonl", [{"instruction": "prompt A", "output": "x y z w v u"}])  # 6
    out_dir = tmp_path / "data"
    out_dir.mkdir()
    (out_dir / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))

    proc = run_script(
        "build_hybrid_data.py", "--pairs", pairs, "--samples", samples, "--outside", outside,
        "--scorer", f"openai:{judge_url}#judge-model", "--output_dir", out_dir, "--name", "hybrid", "--seed", 0,
    )  # fmt: skip
    assert "1 judge answers had no `Score: N`" in proc.stderr

    rows = json.loads((out_dir / "hybrid.json").read_text())
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
    assert info["hybrid"]["ranking"] is True and info["hybrid"]["file_name"] == "hybrid.json"
    assert {request["model"] for request in JudgeHandler.requests} == {"judge-model"}
    assert {request["path"] for request in JudgeHandler.requests} == {"/v1/chat/completions"}
    assert len(JudgeHandler.requests) == 3 + 1 + 2 + 2 + 2

    # the rejected output is a random draw: over seeds, every eligible output of prompt A turns up
    seen = set()
    for seed in range(1, 8):
        run_script(
            "build_hybrid_data.py", "--pairs", pairs, "--samples", samples, "--outside", outside,
            "--scorer", f"openai:{judge_url}#judge-model", "--output_dir", out_dir, "--name", "hybrid",
            "--seed", seed,
        )  # fmt: skip
        seen.add(json.loads((out_dir / "hybrid.json").read_text())[0]["rejected"])
    assert seen == {"a b c d e", "a", "a b c"}


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
        "--pairs", pairs, "--model", assets / "weak", "--template", "qwen", "--num_samples", 4,
        "--max_new_tokens", 6, "--backend", "transformers", "--scorer", f"rm:{rm_dir}", "--scorer_template", "qwen",
        "--output_dir", out_dir, "--seed", 0,
    ]  # fmt: skip
    # a threshold no sample reaches: everything falls back; one every prompt reaches: every prompt is paired
    run_script("build_hybrid_data.py", *common, "--name", "none", "--chosen_min", 1e9)
    fallback = json.loads((out_dir / "none.json").read_text())
    assert [(row["chosen"], row["rejected"], row["source"]) for row in fallback] == [
        (example["chosen"], example["rejected"], "ultrafeedback") for example in data
    ]

    run_script("build_hybrid_data.py", *common, "--name", "all", "--chosen_min", -1e9, "--margin", 1e-6)
    rows = json.loads((out_dir / "all.json").read_text())
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
    assert [example["_response"][0]["content"] for example in loaded] == [row["chosen"] for row in rows]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scorer", "judge"], "--scorer"),
        (["--scorer", "openai:http://h/v1#j", "--model", "m"], "--template"),
        (["--scorer", "openai:http://h/v1#j", "--samples", "missing.jsonl"], "--samples"),
        (
            ["--scorer", "openai:http://h/v1#j", "--model", "m", "--template", "qwen", "--temperature", "0"],
            "--temperature",
        ),
    ],
)
def test_bad_arguments(tmp_path: Path, extra: list[str], message: str) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    proc = run_script(
        "build_hybrid_data.py", "--pairs", pairs, "--output_dir", tmp_path / "out", "--name", "h", *extra,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_choose_pair_rule() -> None:
    builder = script_module("build_hybrid_data")

    def cands(*scores):
        return [builder.Candidate(f"t{i}", "policy", score) for i, score in enumerate(scores)]

    rng = random.Random(0)
    assert builder.choose_pair(cands(4, 3, None), 5, 1, rng) is None
    assert builder.choose_pair(cands(6, 6), 5, 1, rng) is None
    chosen, rejected = builder.choose_pair(cands(5, 6, 4.5, 2), 5, 1, rng)
    assert chosen.text == "t1" and rejected.text in ("t0", "t3")
    assert builder.parse_judge_score("good.\nScore: 7\nScore: **4**") == 4.0
    assert builder.parse_judge_score("no score") is None
    assert str(ROOT) in builder.__file__
