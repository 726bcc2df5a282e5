"""``llamafactory-wspo generate benchmark=...`` on a tiny model: MT-Bench and Arena-Hard answer files in the shapes
their tools read (written from FastChat's and arena-hard-auto's sources), turn 2 conditioned on the model's own
turn 1, FastChat's per-category temperatures, style counts against hand counts, and resuming."""

import json
from pathlib import Path

import pytest
from helpers.cli import QWEN_SYSTEM, read_jsonl, write_jsonl
from transformers import AutoTokenizer

from llamafactory_wspo.cli import benchmarks


# Shapes as published: FastChat data/mt_bench/question.jsonl; arena-hard-auto data/arena-hard-v0.1/question.jsonl
# (before v2.0) and data/arena-hard-v2.0/question.jsonl.
MT_BENCH = [
    {"question_id": 81, "category": "writing", "turns": ["write down some animals", "tell me colors for a poem"]},
    {"question_id": 111, "category": "math", "turns": ["give me numbers", "name a few fruits of the quiz"]},
]
ARENA_HARD = [
    {"question_id": "328c149e", "category": "arena-hard-v0.1", "cluster": "ABC", "turns": [{"content": "list tools"}]},
    {
        "question_id": "b43c0765",
        "category": "arena-hard-v0.1",
        "cluster": "C++",
        "turns": [{"content": "tell fruits"}],
    },
]
ARENA_HARD_V2 = [
    {"uid": "2edbb5f3", "category": "hard_prompt", "subcategory": "coding", "prompt": "give me countries"},
    {"uid": "9f4ae4a1", "category": "creative_writing", "subcategory": "poem", "prompt": "name a few animals"},
]
HEADERS = {f"h{level}": int for level in range(1, 7)}
STYLE = {
    "token_len": int,
    "header_count": HEADERS,
    "list_count": {"ordered": int, "unordered": int},
    "bold_count": {"**": int, "__": int},
}
# The answer records, as FastChat's gen_model_answer.py and arena-hard-auto's gen_answer.py write them.
SCHEMAS = {
    "mt_bench": {
        "question_id": int,
        "answer_id": str,
        "model_id": str,
        "choices": [{"index": int, "turns": [str]}],
        "tstamp": float,
    },
    "arena_hard": {
        "question_id": str,
        "answer_id": str,
        "model_id": str,
        "choices": [{"index": int, "turns": [{"content": str}]}],
        "tstamp": float,
        "conv_metadata": STYLE,
    },
    "arena_hard_v2": {
        "uid": str,
        "ans_id": str,
        "model": str,
        "messages": [{"role": str, "content": str}, {"role": str, "content": {"answer": str}}],
        "tstamp": float,
        "metadata": STYLE,
    },
}


def check_schema(value, schema, where: str = "record") -> None:
    r"""``value`` has exactly ``schema``'s keys and types; a list schema of one item applies to every item, of
    several items to each in turn."""
    if isinstance(schema, dict):
        assert isinstance(value, dict) and list(value) == list(schema), (where, value)
        for key, sub in schema.items():
            check_schema(value[key], sub, f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list) and value, (where, value)
        subs = schema * len(value) if len(schema) == 1 else schema
        assert len(subs) == len(value), (where, value)
        for index, (item, sub) in enumerate(zip(value, subs)):
            check_schema(item, sub, f"{where}[{index}]")
    else:
        assert isinstance(value, schema) and not isinstance(value, bool), (where, value)


def test_markdown_counts_match_hand_counts() -> None:
    text = (
        "# Title\n## Part\n### Sub\n#### Four\n##### Five\n###### Six\n#NoSpace\n"
        "1. one\n  2. two\n10. ten\n- a\n* b\n  + c\n-no space\n"
        "Some **bold** and **more bold** and __under__, **not\nbold**.\n"
        "```python\n# a comment, not a header\n- not a list\n**not bold**\n```\n"
        "After the fence: **last**\n"
    )
    # by hand: h1..h6 one each (`#NoSpace` is none); ordered 3; unordered 3 (`-no space` is none); ** 3, __ 1;
    # the code block's header, list item and bold span are not counted.
    assert benchmarks.count_markdown_elements(benchmarks.remove_code_blocks(text)) == {
        "header_count": {"h1": 1, "h2": 1, "h3": 1, "h4": 1, "h5": 1, "h6": 1},
        "list_count": {"ordered": 3, "unordered": 3},
        "bold_count": {"**": 3, "__": 1},
    }
    assert benchmarks.answer_metadata(text, 7)["token_len"] == 7
    # arena-hard-auto removes the text between the fences and leaves the fences
    assert benchmarks.remove_code_blocks("a ```x\n# y``` b") == "a `````` b"


def test_question_files_of_another_shape_are_refused(capsys, tmp_path: Path) -> None:
    from llamafactory_wspo.cli import main

    for benchmark, records in (("mt_bench", ARENA_HARD), ("arena_hard", MT_BENCH), ("arena_hard_v2", MT_BENCH)):
        source = write_jsonl(tmp_path / f"{benchmark}.jsonl", records)
        code = main(
            ["generate", "model_name_or_path=Qwen/none", "template=qwen", f"benchmark={benchmark}",
             f"input_file={source}", f"output_file={tmp_path / 'out.jsonl'}"]
        )  # fmt: skip
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and f"benchmark {benchmark}" in lines[0], lines
    assert not (tmp_path / "out.jsonl").exists()


def test_unknown_template_is_one_line_before_loading(capsys, tmp_path: Path) -> None:
    from llamafactory_wspo.cli import main

    source = write_jsonl(tmp_path / "q.jsonl", MT_BENCH)
    argv = [f"model_name_or_path={tmp_path / 'no-such-model'}", f"input_file={source}", "benchmark=mt_bench"]
    code = main(["generate", "template=qwn", *argv, f"output_file={tmp_path / 'o.jsonl'}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--template qwn" in lines[0] and "qwen" in lines[0], lines


@pytest.fixture
def spy(monkeypatch):
    r"""Every prompt that the real ``Generator.generate`` receives, with the temperature it samples at."""
    from llamafactory_wspo.inference import Generator

    calls: list[tuple[list[int], float, int]] = []
    real = Generator.generate

    def generate(self, prompts, config, seeds=None):
        calls.extend((list(prompt), config.temperature, config.max_new_tokens) for prompt in prompts)
        return real(self, prompts, config, seeds)

    monkeypatch.setattr(Generator, "generate", generate)
    return calls


def run_generate(assets: Path, benchmark: str, source: Path, out: Path, *extra: str) -> None:
    from llamafactory_wspo.cli import main

    argv = [
        "generate", f"model_name_or_path={assets / 'weak'}", "template=qwen", f"benchmark={benchmark}",
        f"input_file={source}", f"output_file={out}", "infer_backend=huggingface", *extra,
    ]  # fmt: skip
    assert main(argv) == 0


def qwen_text(turns: list[str], answers: list[str]) -> str:
    r"""Qwen's chat format of a conversation up to the next assistant turn, written out by hand."""
    text = f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
    for index, turn in enumerate(turns):
        text += f"<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n"
        if index < len(answers):
            text += f"{answers[index]}<|im_end|>\n"
    return text


def test_mt_bench_two_turns_and_category_temperatures(assets: Path, tmp_path: Path, spy) -> None:
    source = write_jsonl(tmp_path / "question.jsonl", MT_BENCH)
    out = tmp_path / "model_answer" / "tiny.jsonl"
    run_generate(assets, "mt_bench", source, out, "model_id=tiny", "max_new_tokens=6", "seed=1")
    rows = read_jsonl(out)
    for row in rows:
        check_schema(row, SCHEMAS["mt_bench"])
    assert [row["question_id"] for row in rows] == [81, 111] and {row["model_id"] for row in rows} == {"tiny"}
    answers = [row["choices"][0]["turns"] for row in rows]
    assert all(len(turns) == 2 and all(turns) for turns in answers), answers

    # turn 1 of both questions, then turn 2 of both; turn 2's prompt holds the model's own turn-1 answer
    tokenizer = AutoTokenizer.from_pretrained(assets / "weak")
    seen = [(tokenizer.decode(ids, skip_special_tokens=False), temperature) for ids, temperature, _ in spy]
    expected = [
        qwen_text(question["turns"][: turn + 1], turns[:turn]) for turn in (0, 1) for question, turns in
        zip(MT_BENCH, answers)
    ]  # fmt: skip
    normalize = lambda text: tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert sorted(text for text, _ in seen) == sorted(normalize(text) for text in expected)
    assert seen[2:] != seen[:2] and all(answers[i][0] in seen_text for i, (seen_text, _) in enumerate(seen[2:]))
    # FastChat's temperatures: writing 0.7, math greedy; 6 new tokens as asked
    temperatures = {text: temperature for text, temperature in seen}
    for question, turns in zip(MT_BENCH, answers):
        for turn in (0, 1):
            text = normalize(qwen_text(question["turns"][: turn + 1], turns[:turn]))
            assert temperatures[text] == {"writing": 0.7, "math": 0.0}[question["category"]]
    assert {max_new_tokens for _, _, max_new_tokens in spy} == {6}
    record = json.loads((out.parent / "tiny.jsonl.options.json").read_text())["options"]
    assert record["benchmark"] == "mt_bench" and record["model_id"] == "tiny"
    assert record["temperature"]["writing"] == 0.7 and record["temperature"]["math"] == 0.0

    # another seed: math (greedy) answers again the same, writing (sampled at 0.7) differently
    other = tmp_path / "model_answer" / "tiny2.jsonl"
    run_generate(assets, "mt_bench", source, other, "max_new_tokens=6", "seed=2")
    again = [row["choices"][0]["turns"] for row in read_jsonl(other)]
    assert again[1] == answers[1] and again[0] != answers[0]
    assert {row["model_id"] for row in read_jsonl(other)} == {"tiny2"}  # model_id defaults to the file's stem


@pytest.mark.parametrize(("benchmark", "questions"), [("arena_hard", ARENA_HARD), ("arena_hard_v2", ARENA_HARD_V2)])
def test_arena_hard_answers_and_resume(
    capsys, monkeypatch, assets: Path, tmp_path: Path, spy, benchmark: str, questions: list[dict]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no tiktoken file here: the model's tokenizer counts, and says so
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    source = write_jsonl(tmp_path / "question.jsonl", questions)
    out = tmp_path / "model_answer" / "tiny.jsonl"
    run_generate(assets, benchmark, source, out, "max_new_tokens=6", "max_samples=1")  # stopped after one
    first = out.read_text()
    with open(out, "a") as handle:  # and a line torn by a kill
        handle.write('{"question_id": "b43c')
    run_generate(assets, benchmark, source, out, "max_new_tokens=6")
    assert out.read_text().startswith(first) and len(spy) == 2, "the answered question was generated again"
    assert "1 of 2 questions already answered, resuming" in capsys.readouterr().out

    tokenizer = AutoTokenizer.from_pretrained(assets / "weak")
    rows = read_jsonl(out)
    for row, question in zip(rows, questions):
        check_schema(row, SCHEMAS[benchmark])
        if benchmark == "arena_hard":
            assert row["question_id"] == question["question_id"] and row["model_id"] == "tiny"
            answer, metadata = row["choices"][0]["turns"][0]["content"], row["conv_metadata"]
        else:
            assert row["uid"] == question["uid"] and row["model"] == "tiny"
            assert row["messages"][0] == {"role": "user", "content": question["prompt"]}
            assert row["messages"][1]["role"] == "assistant"
            answer, metadata = row["messages"][1]["content"]["answer"], row["metadata"]
        assert answer and metadata["token_len"] == len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        assert metadata == benchmarks.answer_metadata(answer, metadata["token_len"])
    assert {temperature for _, temperature, _ in spy} == {0.0}  # arena-hard-auto's temperature
    record = json.loads((out.parent / "tiny.jsonl.options.json").read_text())["options"]
    assert record["benchmark"] == benchmark and record["token_len"] == "model tokenizer"

    # another model_id for the same file: refused in one line, the file untouched
    from llamafactory_wspo.cli import main

    done = out.read_text()
    code = main(
        ["generate", f"model_name_or_path={assets / 'weak'}", "template=qwen", f"benchmark={benchmark}",
         f"input_file={source}", f"output_file={out}", "max_new_tokens=6", "model_id=other", "max_samples=3"]
    )  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "--model_id (tiny then, other now)" in lines[0], lines
    assert out.read_text() == done


def test_alpaca_eval_generator_is_the_model_id(capsys, tmp_path: Path) -> None:
    from llamafactory_wspo.cli import main

    rows = [{"instruction": "list animals", "prompt": "...", "predict": "cat dog", "label": None}]
    source = write_jsonl(tmp_path / "wspo.jsonl", rows)
    target = tmp_path / "alpaca.json"
    assert main(["export-alpaca-eval", str(source), str(target), "model_id=qwen2-7b-wspo"]) == 0
    assert json.loads(target.read_text()) == [
        {"instruction": "list animals", "output": "cat dog", "generator": "qwen2-7b-wspo"}
    ]
    assert main(["export-alpaca-eval", str(source), str(target)]) == 0  # default: the input file's stem
    assert json.loads(target.read_text())[0]["generator"] == "wspo"
    capsys.readouterr()
    assert main(["export-alpaca-eval", str(source), str(target), "model_id=a", "generator=b"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--model_id a" in lines[0], lines
