r"""The question and answer files of MT-Bench and Arena-Hard, as their own tools read and write them.

Small pure functions, each written from the tool's source:

* MT-Bench: FastChat's modules ``fastchat.llm_judge.common`` (``temperature_config``, ``load_questions``,
  ``load_model_answers``) and ``fastchat.llm_judge.gen_model_answer`` (the answer record, 1024 new tokens,
  temperature 0.7 for a category the table does not name).
* Arena-Hard v0.1: lmarena/arena-hard-auto before v2.0 (commit 3071ef9, March 2025: its scripts ``gen_answer`` and
  ``add_markdown_info`` and its ``config/gen_answer_config.yaml``: temperature 0, 4096 tokens; ``conv_metadata``
  with ``token_len`` in ``tiktoken.encoding_for_model("gpt-3.5-turbo")``, i.e. ``cl100k_base``).
* Arena-Hard v2.0: lmarena/arena-hard-auto's ``gen_answer`` and ``utils.add_markdown_info`` (``metadata`` with
  ``token_len`` in ``tiktoken.encoding_for_model("gpt-4o")``, i.e. ``o200k_base``).

The markdown counts are taken outside code blocks exactly as arena-hard-auto does: the text between each pair of
triple backticks is removed (the backticks stay), then headers, list items and bold spans are counted by its regular
expressions.
"""

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


BENCHMARKS = ("mt_bench", "arena_hard", "arena_hard_v2")

# FastChat's fastchat.llm_judge.common `temperature_config`; its gen_model_answer uses 0.7 for other categories.
MT_BENCH_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
MT_BENCH_OTHER_TEMPERATURE = 0.7
# Arena-Hard v0.1 gen_answer_config.yaml: temperature 0.0 (its gen_answer script lets the table above override it for
# the categories it names; v0.1's questions are all "arena-hard-v0.1"). v2.0 takes the temperature of the model's
# endpoint entry; its examples use 0.0.
ARENA_HARD_TEMPERATURE = 0.0
ARENA_HARD_V01_TEMPERATURES = {key: value for key, value in MT_BENCH_TEMPERATURES.items() if key != "arena-hard-200"}
MAX_NEW_TOKENS = {"mt_bench": 1024, "arena_hard": 4096, "arena_hard_v2": 4096}
TOKEN_ENCODINGS = {"arena_hard": "cl100k_base", "arena_hard_v2": "o200k_base"}
TIKTOKEN_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
CODE_BLOCK = re.compile("```([^`]*)```")  # arena-hard-auto's pattern (its group: the text between the fences)


@dataclass(frozen=True)
class Question:
    r"""One benchmark question: its id (``question_id``, or ``uid`` in Arena-Hard v2), category and user turns."""

    id: Any
    category: str
    turns: tuple[str, ...]
    index: int = 0  # its position in the question file: question i samples with seed + i

    @property
    def instruction(self) -> str:
        return self.turns[0]


def _field(record: dict[str, Any], key: str, number: int, kind: type | tuple[type, ...]) -> Any:
    if key not in record:
        raise ValueError(f"question {number} has no `{key}` field (fields: {sorted(record)})")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"question {number}: `{key}` has the wrong type ({type(value).__name__})")
    return value


def read_questions(benchmark: str, records: Sequence[dict[str, Any]]) -> list[Question]:
    r"""The questions of a benchmark's question file (its records, in order); a ValueError names a wrong record.

    MT-Bench: ``{question_id, category, turns: [str, ...]}``; Arena-Hard v0.1: ``{question_id, category, cluster,
    turns: [{content}]}``; Arena-Hard v2: ``{uid, category, subcategory, prompt}``.
    """
    questions = []
    for index, record in enumerate(records):
        number = index + 1
        if benchmark == "arena_hard_v2":
            turns = [_field(record, "prompt", number, str)]
            question_id = _field(record, "uid", number, (str, int))
        else:
            raw = _field(record, "turns", number, list)
            question_id = _field(record, "question_id", number, (str, int))
            if benchmark == "arena_hard":
                if not all(isinstance(turn, dict) and isinstance(turn.get("content"), str) for turn in raw):
                    raise ValueError(f'question {number}: `turns` must be a list of {{"content": str}} objects')
                turns = [turn["content"] for turn in raw]
            else:
                if not all(isinstance(turn, str) for turn in raw):
                    raise ValueError(f"question {number}: `turns` must be a list of strings (MT-Bench's format)")
                turns = list(raw)
        if not turns:
            raise ValueError(f"question {number} has no turns")
        questions.append(Question(question_id, str(record.get("category", "")), tuple(turns), index))
    ids = [question.id for question in questions]
    if len(set(ids)) != len(ids):
        duplicate = next(value for value in ids if ids.count(value) > 1)
        raise ValueError(f"question id {duplicate!r} appears more than once")
    return questions


def question_temperature(benchmark: str, category: str, temperature: float | None) -> float:
    r"""The sampling temperature of a question: ``temperature`` when the user set one, else the tool's own."""
    if temperature is not None:
        return temperature
    if benchmark == "mt_bench":
        return MT_BENCH_TEMPERATURES.get(category, MT_BENCH_OTHER_TEMPERATURE)
    if benchmark == "arena_hard":
        return ARENA_HARD_V01_TEMPERATURES.get(category, ARENA_HARD_TEMPERATURE)
    return ARENA_HARD_TEMPERATURE


def default_temperatures(benchmark: str) -> dict[str, float]:
    r"""The tool's temperatures by category (``"other"``: the rest), as recorded in the options record."""
    if benchmark == "mt_bench":
        return {**MT_BENCH_TEMPERATURES, "other": MT_BENCH_OTHER_TEMPERATURE}
    if benchmark == "arena_hard":
        return {**ARENA_HARD_V01_TEMPERATURES, "other": ARENA_HARD_TEMPERATURE}
    return {"other": ARENA_HARD_TEMPERATURE}


def remove_code_blocks(text: str) -> str:
    r"""arena-hard-auto's ``remove_pattern(answer, re.compile("```([^`]*)```"))``: each block's inside removed."""
    for block in CODE_BLOCK.findall(text):
        text = text.replace(block, "")
    return text


def count_markdown_elements(text: str) -> dict[str, dict[str, int]]:
    r"""arena-hard-auto's ``count_markdown_elements(text, suffix="")`` (call it on :func:`remove_code_blocks`)."""
    return {
        "header_count": {
            f"h{level}": len(re.findall(rf"^#{{{level}}}\s", text, re.MULTILINE)) for level in range(1, 7)
        },
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\.\s", text, re.MULTILINE)),
            "unordered": len(re.findall(r"^\s*[-*+]\s", text, re.MULTILINE)),
        },
        "bold_count": {
            "**": len(re.findall(r"\*\*[^*\n]+\*\*", text)),
            "__": len(re.findall(r"__[^_\n]+__", text)),
        },
    }


def answer_metadata(answer: str, token_len: int) -> dict[str, Any]:
    r"""Arena-Hard's style metadata of an answer: ``token_len`` and the markdown counts outside code blocks."""
    return {"token_len": token_len, **count_markdown_elements(remove_code_blocks(answer))}


def answer_record(
    benchmark: str,
    question: Question,
    answers: Sequence[str],
    model_id: str,
    answer_id: str,
    tstamp: float,
    token_len: int | None = None,
) -> dict[str, Any]:
    r"""One line of the benchmark's answer file (``model_answer/<model_id>.jsonl``), as its generator writes it."""
    if benchmark == "mt_bench":
        return {
            "question_id": question.id,
            "answer_id": answer_id,
            "model_id": model_id,
            "choices": [{"index": 0, "turns": list(answers)}],
            "tstamp": tstamp,
        }
    metadata = answer_metadata(answers[-1], token_len if token_len is not None else 0)
    if benchmark == "arena_hard":
        return {
            "question_id": question.id,
            "answer_id": answer_id,
            "model_id": model_id,
            "choices": [{"index": 0, "turns": [{"content": answer} for answer in answers]}],
            "tstamp": tstamp,
            "conv_metadata": metadata,
        }
    return {
        "uid": question.id,
        "ans_id": answer_id,
        "model": model_id,
        "messages": [
            {"role": "user", "content": question.turns[0]},
            {"role": "assistant", "content": {"answer": answers[-1]}},
        ],
        "tstamp": tstamp,
        "metadata": metadata,
    }


def record_key(benchmark: str, record: dict[str, Any]) -> tuple[Any, Any]:
    r"""``(question id, model)`` of an answer record (what a resumed run checks its rows by)."""
    if benchmark == "arena_hard_v2":
        return record.get("uid"), record.get("model")
    return record.get("question_id"), record.get("model_id")


def tiktoken_cache_file(encoding: str) -> str | None:
    r"""Where tiktoken keeps its copy of ``encoding``'s file (``TIKTOKEN_CACHE_DIR``, ``DATA_GYM_CACHE_DIR`` or
    ``<tmp>/data-gym-cache``, named by the SHA-1 of its URL), or None when caching is off."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None
    return os.path.join(cache_dir, hashlib.sha1(TIKTOKEN_URLS[encoding].encode()).hexdigest())


def token_counter(
    encoding: str, fallback: Callable[[str], int], offline: bool
) -> tuple[Callable[[str], int], str, str]:
    r"""``(count, source, reason)``: the number of tokens of a text in tiktoken's ``encoding``, as arena-hard-auto
    counts them (``disallowed_special=()``), and ``source`` ``"tiktoken <encoding>"``. Without the encoding file
    (tiktoken downloads it once, into its cache; offline, or without tiktoken): ``fallback`` (the model's own
    tokenizer), ``source`` ``"model tokenizer"`` and ``reason`` why."""
    cached = tiktoken_cache_file(encoding)
    reason = "tiktoken is not installed"
    try:
        import tiktoken
    except ImportError:
        tiktoken = None
    if tiktoken is not None:
        if offline and not (cached and os.path.isfile(cached)):
            reason = f"offline, and tiktoken's cache has no {encoding} file ({cached}; set TIKTOKEN_CACHE_DIR)"
        else:
            try:
                coder = tiktoken.get_encoding(encoding)
            except Exception as err:  # the download failed (no network): tiktoken raises requests' errors
                reason = f"tiktoken could not load {encoding} ({type(err).__name__})"
            else:
                return (lambda text: len(coder.encode(text, disallowed_special=()))), f"tiktoken {encoding}", ""
    return fallback, "model tokenizer", reason
