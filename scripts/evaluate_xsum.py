"""Score XSUM summaries: length statistics, the length reward, the in-range share and ROUGE against the references.

    python scripts/evaluate_xsum.py saves/xsum/qwen2-7b-wspo/predict/generated_predictions.jsonl
    python scripts/evaluate_xsum.py predictions.jsonl --length_min 20 --length_max 30 --output metrics.json

The input is a JSONL file as LLaMA-Factory's ``do_predict`` writes it (``generated_predictions.jsonl``): one object
per prompt with ``predict`` (the generated summary, or a list of summaries when several were sampled: all are
scored) and ``label`` (the reference summary). Every summary counts once; with several samples per prompt each is
compared with its prompt's reference. Printed and written as JSON (default ``<input>.metrics.json``):

- ``num_prompts``, ``num_summaries``;
- ``words_mean``, ``words_median``, ``words_std`` (population standard deviation) of the word counts
  (whitespace-separated words, as the reward counts them);
- ``length_reward_mean``: mean of ``llamafactory_wspo.rewards.length_reward`` for ``[length_min, length_max]``;
- ``in_range_share``: share of summaries with ``length_min <= words <= length_max``;
- ``rouge1``, ``rouge2``, ``rougeL``: mean F1 (in [0, 1]) from the ``rouge-score`` package with Porter stemming.
"""

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _cli import parse_args

from llamafactory_wspo.rewards import DEFAULT_LENGTH_MAX, DEFAULT_LENGTH_MIN, check_length_range, length_reward


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def read_predictions(path: Path) -> tuple[list[str], list[str], int]:
    r"""Summaries and their references, one pair per summary, from a ``predict``/``label`` JSONL file.

    Also returns the number of prompts (non-empty lines).
    """
    summaries, references, num_prompts = [], [], 0
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue

            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"{path}, line {line_number}: not valid JSON ({err}).") from err
            if not isinstance(item, dict) or "predict" not in item or "label" not in item:
                raise SystemExit(
                    f"{path}, line {line_number}: expected an object with `predict` and `label` keys, as in "
                    "LLaMA-Factory's generated_predictions.jsonl."
                )

            predicts = item["predict"] if isinstance(item["predict"], list) else [item["predict"]]
            if not all(isinstance(text, str) for text in predicts) or not isinstance(item["label"], str):
                raise SystemExit(
                    f"{path}, line {line_number}: `predict` must be a string or a list of strings, and `label` a "
                    "string."
                )

            num_prompts += 1
            summaries += [text.strip() for text in predicts]
            references += [item["label"].strip()] * len(predicts)

    return summaries, references, num_prompts


def rouge_f1(summaries: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    r"""Mean ROUGE-1/2/L F1 of each summary against its reference (``rouge-score``, Porter stemmer)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise SystemExit(
            "ROUGE needs the `rouge-score` package: pip install rouge-score (or the plugin's `eval` extra)."
        ) from err

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for summary, reference in zip(summaries, references, strict=True):
        scores = scorer.score(reference, summary)  # score(target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure

    return {name: total / len(summaries) for name, total in totals.items()}


def evaluate(
    summaries: Sequence[str],
    references: Sequence[str],
    length_min: int = DEFAULT_LENGTH_MIN,
    length_max: int = DEFAULT_LENGTH_MAX,
) -> dict[str, Any]:
    r"""The metrics of the module docstring (without ``num_prompts``) for paired summaries and references."""
    check_length_range(length_min, length_max)
    if not summaries:
        raise SystemExit("No summaries to evaluate: the predictions file has no `predict` entries.")

    words = [len(summary.split()) for summary in summaries]
    rewards = length_reward(summaries, length_min, length_max)
    return {
        "num_summaries": len(summaries),
        "length_min": length_min,
        "length_max": length_max,
        "words_mean": statistics.fmean(words),
        "words_median": statistics.median(words),
        "words_std": statistics.pstdev(words),
        "length_reward_mean": statistics.fmean(rewards),
        "in_range_share": sum(length_min <= n <= length_max for n in words) / len(words),
        **rouge_f1(summaries, references),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("predictions", help="JSONL file with `predict` (string or list of strings) and `label`")
    parser.add_argument("--length_min", type=int, default=DEFAULT_LENGTH_MIN, help="L_min of the length reward")
    parser.add_argument("--length_max", type=int, default=DEFAULT_LENGTH_MAX, help="L_max of the length reward")
    parser.add_argument(
        "--output", default=None, help="JSON file for the metrics (default: <predictions>.metrics.json)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)
    try:
        check_length_range(args.length_min, args.length_max)
    except ValueError:
        raise SystemExit(
            f"--length_min {args.length_min} --length_max {args.length_max}: need 0 <= --length_min < --length_max."
        ) from None

    path = Path(args.predictions)
    if not path.is_file():
        raise SystemExit(f"predictions file {path} does not exist: give the generated_predictions.jsonl to score.")

    summaries, references, num_prompts = read_predictions(path)
    metrics = {"predictions": str(path), "num_prompts": num_prompts}
    metrics.update(evaluate(summaries, references, args.length_min, args.length_max))
    output = Path(args.output) if args.output else path.with_name(path.stem + ".metrics.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(metrics, indent=2))
    print(f"Metrics written to {output}", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
