"""Build WPO's hybrid preference data: policy samples and an outside model's output, scored and paired.

    # 1. five policy samples per prompt (or let this script sample with --model/--template)
    python scripts/generate.py --model meta-llama/Meta-Llama-3-8B-Instruct --template llama3 \\
        --input ultrafeedback_prompts.jsonl --prompt_key prompt --output saves/hybrid/samples.jsonl \\
        --num_samples 5 --temperature 0.7 --top_p 0.95 --max_new_tokens 2048
    # 2. score, pair, fall back to UltraFeedback, write the data set and its dataset_info.json entry
    python scripts/build_hybrid_data.py --pairs llamafactory/ultrafeedback_binarized \\
        --samples saves/hybrid/samples.jsonl --outside saves/hybrid/outside.jsonl \\
        --scorer openai:http://127.0.0.1:8001/v1#judge-model \\
        --output_dir yaml_recipes/data --name ultrafeedback_hybrid_llama3

The rule (WPO paper, hybrid setting): for each prompt of ``--pairs`` the candidates are its policy samples plus
the outside model's output (``--outside``, optional); each is scored; the best-scored candidate is chosen if its
score is at least ``--chosen_min`` (default 5), and a candidate scoring at most ``chosen - --margin`` (default 1)
is drawn at random (``--seed``) as rejected. A prompt without such a pair keeps its ``--pairs`` pair.

Scorers (``--scorer``):

- ``openai:<base url>#<model>``: an OpenAI-compatible chat-completions endpoint (vLLM's server, ...) acting as a
  judge on the paper's 1-6 additive scale; it must end its answer with ``Score: <1-6>``. ``OPENAI_API_KEY`` is
  sent when set. An answer without a score leaves that candidate out.
- ``rm:<path>``: a reward model with a one-logit sequence-classification head, run with transformers. The text is
  formatted by ``--scorer_template`` (a LLaMA-Factory template) or else the tokenizer's chat template. Its scores
  are on its own scale: set ``--chosen_min`` and ``--margin`` to fit it.

Inputs: ``--pairs`` is a hub data set id (``--pairs_split``) or a local .json/.jsonl file whose records have
``instruction`` or ``prompt`` and ``chosen``/``rejected`` (strings, or message lists whose last message is the
response). ``--samples`` and ``--outside`` are JSONL/JSON records with ``instruction`` and ``predict`` (a string
or a list: ``scripts/generate.py``'s output) or ``output``; they are matched to prompts by their text.

Output: ``<output-dir>/<name>.json`` (alpaca ranking format: ``instruction``, ``input``, ``chosen``,
``rejected``, plus ``source``, ``chosen_score``, ``rejected_score``, ``chosen_origin``), and the entry ``<name>``
merged into ``<output-dir>/dataset_info.json``; both written atomically.
"""

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import parse_args  # noqa: E402
from generate import read_records  # noqa: E402


JUDGE_PROMPT = """You are grading how well an AI assistant answered a user. Start from 0 points and add:
- 1 point if the answer is relevant to the user's request, even if incomplete;
- 1 point if it addresses a substantial part of the request;
- 1 point if it answers the core of the request usefully;
- 1 point if it is clearly written from an assistant's perspective, well organised and complete;
- 1 point if it is accurate, direct and free of unneeded content;
- 1 point if it is excellent: expert, engaging and hard to improve.

[User request]
{instruction}

[Assistant answer]
{response}

Explain your grading in at most three sentences, then end with a line "Score: N" where N is 1 to 6."""
SCORE_PATTERN = re.compile(r"Score:\s*\**\s*([1-6])\b")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Candidate:
    text: str
    origin: str  # "policy" or "outside"
    score: float | None = None


def response_text(value: Any) -> str:
    r"""A response given as a string or as a message list (its last message's content)."""
    if isinstance(value, list):
        return str(value[-1]["content"]) if value else ""
    return str(value)


def load_pairs(source: str, split: str, max_prompts: int | None) -> list[dict[str, str]]:
    r"""``{"instruction", "chosen", "rejected"}`` per record of ``--pairs``."""
    path = Path(source)
    if path.suffix in (".json", ".jsonl") or path.exists():
        if not path.is_file():
            raise ValueError(f"--pairs {source}: no such file.")
        records = read_records(path)
    else:
        from datasets import load_dataset

        records = load_dataset(source, split=split)
    pairs = []
    for index, record in enumerate(records):
        if max_prompts is not None and index >= max_prompts:
            break
        prompt = record.get("instruction", record.get("prompt"))
        if prompt is None or "chosen" not in record or "rejected" not in record:
            raise ValueError(f"--pairs record {index}: expected `instruction` (or `prompt`), `chosen` and `rejected`.")
        if record.get("input"):
            prompt = f"{prompt}\n{record['input']}"
        pairs.append(
            {
                "instruction": prompt,
                "chosen": response_text(record["chosen"]),
                "rejected": response_text(record["rejected"]),
            }
        )
    return pairs


def load_outputs(path: Path, flag: str) -> dict[str, list[str]]:
    r"""Outputs per instruction of a ``--samples`` / ``--outside`` file."""
    outputs: dict[str, list[str]] = {}
    for index, record in enumerate(read_records(path)):
        value = record.get("predict", record.get("output"))
        if "instruction" not in record or value is None:
            raise ValueError(f"{flag} {path} record {index}: expected `instruction` and `predict` (or `output`).")
        texts = value if isinstance(value, list) else [value]
        outputs.setdefault(record["instruction"], []).extend(str(text) for text in texts)
    return outputs


def choose_pair(
    candidates: Sequence[Candidate], chosen_min: float, margin: float, rng: random.Random
) -> tuple[Candidate, Candidate] | None:
    r"""The hybrid rule: best candidate if it scores >= ``chosen_min``, a random one scoring <= best - ``margin``."""
    scored = [candidate for candidate in candidates if candidate.score is not None]
    if not scored:
        return None
    best = max(candidate.score for candidate in scored)
    if best < chosen_min:
        return None
    chosen = rng.choice([candidate for candidate in scored if candidate.score == best])
    pool = [candidate for candidate in scored if candidate.score <= best - margin]
    if not pool:
        return None
    return chosen, rng.choice(pool)


def parse_judge_score(answer: str) -> float | None:
    r"""The last ``Score: N`` (N in 1..6) of a judge's answer, or ``None``."""
    matches = SCORE_PATTERN.findall(answer or "")
    return float(matches[-1]) if matches else None


class OpenAIJudge:
    r"""Scores with an OpenAI-compatible chat-completions endpoint on the 1-6 additive scale."""

    def __init__(self, base_url: str, model: str, workers: int = 8, timeout: float = 300.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.workers = workers
        self.timeout = timeout
        self.unparsed = 0

    def _ask(self, instruction: str, response: str) -> float | None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": JUDGE_PROMPT.format(instruction=instruction, response=response)}],
            "temperature": 0.0,
            "max_tokens": 512,
        }
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        for attempt in range(3):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    answer = json.load(reply)["choices"][0]["message"]["content"]
                break
            except OSError:
                if attempt == 2:
                    raise
                time.sleep(2**attempt)
        score = parse_judge_score(answer)
        if score is None:
            self.unparsed += 1
        return score

    def __call__(self, items: Sequence[tuple[str, str]]) -> list[float | None]:
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda item: self._ask(*item), items))


class RewardModelScorer:
    r"""Scores with a local reward model (sequence classification, one logit) through transformers."""

    def __init__(self, path: str, template: str | None, batch_size: int = 8, cutoff_len: int = 4096) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, torch_dtype="auto").eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"--scorer rm:{path}: a reward model has one output, this one has {self.model.config.num_labels}."
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.template = None
        if template:
            from llamafactory.data import get_template_and_fix_tokenizer
            from llamafactory.hparams import DataArguments

            self.template = get_template_and_fix_tokenizer(self.tokenizer, DataArguments(template=template))
        elif not self.tokenizer.chat_template:
            raise ValueError(
                f"--scorer rm:{path}: the tokenizer has no chat template; name one with --scorer_template."
            )
        self.batch_size = batch_size
        self.cutoff_len = cutoff_len
        self.torch = torch

    def _encode(self, instruction: str, response: str) -> list[int]:
        messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
        if self.template is not None:
            prompt_ids, response_ids = self.template.encode_oneturn(self.tokenizer, messages)
            ids = prompt_ids + response_ids
        else:
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        return list(ids)[-self.cutoff_len :]

    def __call__(self, items: Sequence[tuple[str, str]]) -> list[float | None]:
        scores: list[float | None] = []
        pad_id = self.tokenizer.pad_token_id
        for start in range(0, len(items), self.batch_size):
            encoded = [self._encode(*item) for item in items[start : start + self.batch_size]]
            width = max(len(ids) for ids in encoded)
            input_ids = self.torch.full((len(encoded), width), pad_id, dtype=self.torch.long)
            attention_mask = self.torch.zeros_like(input_ids)
            for row, ids in enumerate(encoded):  # right padding: the head reads the last non-pad token
                input_ids[row, : len(ids)] = self.torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
            with self.torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            scores.extend(float(value) for value in logits[:, 0].float())
        return scores


def parse_scorer(spec: str) -> tuple[str, str, str | None]:
    r"""``("rm", path, None)`` or ``("openai", base_url, model)``, checked before anything loads."""
    kind, _, rest = spec.partition(":")
    if kind == "rm" and rest:
        return "rm", rest, None
    if kind == "openai" and "#" in rest:
        url, _, model = rest.rpartition("#")
        if url.startswith(("http://", "https://")) and model:
            return "openai", url, model
    raise ValueError(
        f"--scorer {spec!r}: expected rm:<reward model path> or openai:<base url>#<model>, "
        "e.g. openai:http://127.0.0.1:8001/v1#judge."
    )


def build_rows(
    pairs: Sequence[dict[str, str]],
    samples: dict[str, list[str]],
    outside: dict[str, list[str]],
    scorer: Callable[[Sequence[tuple[str, str]]], list[float | None]],
    chosen_min: float,
    margin: float,
    seed: int,
) -> list[dict[str, Any]]:
    r"""One ranking record per prompt of ``pairs``, by the hybrid rule, else the prompt's own pair."""
    candidates = [
        [Candidate(text, "policy") for text in samples.get(pair["instruction"], [])]
        + [Candidate(text, "outside") for text in outside.get(pair["instruction"], [])]
        for pair in pairs
    ]
    flat = [(pair["instruction"], candidate.text) for pair, group in zip(pairs, candidates) for candidate in group]
    scores = iter(scorer(flat) if flat else [])
    rng = random.Random(seed)
    rows = []
    for pair, group in zip(pairs, candidates):
        scored = [Candidate(candidate.text, candidate.origin, next(scores)) for candidate in group]
        picked = choose_pair(scored, chosen_min, margin, rng)
        row = {"instruction": pair["instruction"], "input": ""}
        if picked is None:
            row.update(chosen=pair["chosen"], rejected=pair["rejected"], source="ultrafeedback")
            row.update(chosen_score=None, rejected_score=None, chosen_origin=None)
        else:
            chosen, rejected = picked
            row.update(chosen=chosen.text, rejected=rejected.text, source="hybrid")
            row.update(chosen_score=chosen.score, rejected_score=rejected.score, chosen_origin=chosen.origin)
        rows.append(row)
    return rows


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dataset_entry(name: str) -> dict[str, Any]:
    return {
        "file_name": f"{name}.json",
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="Fallback pairs: hub id or local .json/.jsonl file.")
    parser.add_argument("--pairs_split", default="train", help="Split of a hub --pairs data set.")
    parser.add_argument("--max_prompts", type=int, default=None, help="Use only the first N prompts of --pairs.")
    parser.add_argument("--samples", type=Path, default=None, help="Policy samples (scripts/generate.py output).")
    parser.add_argument("--model", default=None, help="Sample the policy here instead of --samples: model path.")
    parser.add_argument("--template", default=None, help="LLaMA-Factory template of --model.")
    parser.add_argument("--num_samples", type=int, default=5, help="Policy samples per prompt (with --model).")
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature (with --model).")
    parser.add_argument("--top_p", type=float, default=0.95, help="Nucleus threshold (with --model).")
    parser.add_argument("--max_new_tokens", type=int, default=2048, help="Longest sample (with --model).")
    parser.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Run Python code that the model folder or hub repository carries (off by default; only for models you "
        "trust).",
    )
    parser.add_argument("--outside", type=Path, default=None, help="The outside model's outputs (optional).")
    parser.add_argument("--scorer", required=True, help="rm:<path> or openai:<base url>#<model>.")
    parser.add_argument("--scorer_template", default=None, help="LLaMA-Factory template for an rm: scorer.")
    parser.add_argument("--workers", type=int, default=8, help="Parallel requests to an openai: scorer.")
    parser.add_argument("--chosen_min", type=float, default=5.0, help="Lowest score a chosen output may have.")
    parser.add_argument("--margin", type=float, default=1.0, help="Least score gap between chosen and rejected.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the random choices (and of sampling).")
    parser.add_argument("--output_dir", type=Path, required=True, help="Folder of the data set and dataset_info.json.")
    parser.add_argument("--name", required=True, help="Data set name (file <name>.json and dataset_info entry).")
    return parser


def check_args(args: argparse.Namespace) -> None:
    r"""Every check that needs no model, before any model loads or anything is written."""
    parse_scorer(args.scorer)
    if (args.samples is None) == (args.model is None):
        raise ValueError("give exactly one of --samples (a samples file) or --model (sample here, with --template).")
    if args.model is not None:
        if not args.template:
            raise ValueError("--model needs --template, the LLaMA-Factory chat template of the policy.")
        from llamafactory_wspo.inference import SamplingConfig, resolve_backend

        SamplingConfig(args.num_samples, args.temperature, args.top_p, args.max_new_tokens, args.seed).check()
        resolve_backend(args.backend)
    for flag in ("samples", "outside"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise ValueError(f"--{flag} {path}: no such file.")
    if not NAME_PATTERN.match(args.name):
        raise ValueError(f"--name {args.name!r}: use letters, digits, '_', '-' or '.' only.")
    if args.margin <= 0:
        raise ValueError(f"--margin must be > 0, got {args.margin}.")
    info = args.output_dir / "dataset_info.json"
    if info.is_file():
        try:
            json.loads(info.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"--output_dir: {info} is not valid JSON ({err}); fix it first.") from err


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    try:
        check_args(args)
        pairs = load_pairs(args.pairs, args.pairs_split, args.max_prompts)
        samples = load_outputs(args.samples, "--samples") if args.samples else None
        outside = load_outputs(args.outside, "--outside") if args.outside else {}
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if samples is None:
        from llamafactory_wspo.inference import Generator, SamplingConfig

        generator = Generator(
            args.model, args.template, backend=args.backend, trust_remote_code=args.trust_remote_code
        )
        config = SamplingConfig(args.num_samples, args.temperature, args.top_p, args.max_new_tokens, args.seed)
        prompts = [generator.encode([{"role": "user", "content": pair["instruction"]}]) for pair in pairs]
        samples = {}
        for pair, outputs in zip(pairs, generator.generate(prompts, config)):
            samples.setdefault(pair["instruction"], []).extend(outputs)
        del generator

    kind, target, judge_model = parse_scorer(args.scorer)
    if kind == "openai":
        scorer = OpenAIJudge(target, judge_model, workers=args.workers)
    else:
        scorer = RewardModelScorer(target, args.scorer_template)
    rows = build_rows(pairs, samples, outside, scorer, args.chosen_min, args.margin, args.seed)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output_dir / f"{args.name}.json", rows)
    info_path = args.output_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info[args.name] = dataset_entry(args.name)
    write_json_atomic(info_path, info)

    sources = Counter(row["source"] for row in rows)
    origins = Counter(row["chosen_origin"] for row in rows if row["source"] == "hybrid")
    print(
        f"wrote {len(rows)} pairs to {args.output_dir / (args.name + '.json')}: {sources['hybrid']} hybrid "
        f"(chosen from policy {origins['policy']}, outside {origins['outside']}), {sources['ultrafeedback']} "
        f"from --pairs; entry `{args.name}` in {info_path}"
    )
    if isinstance(scorer, OpenAIJudge) and scorer.unparsed:
        print(f"warning: {scorer.unparsed} judge answers had no `Score: N` and were left out.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
