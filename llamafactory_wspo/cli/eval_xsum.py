r"""``llamafactory-wspo eval-xsum``: length statistics, length reward, in-range share and ROUGE of XSUM summaries.

The length metrics need nothing beyond the package; ROUGE needs ``rouge-score`` and is skipped, with one line on
stderr, where it is not installed.
"""

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..length_reward import DEFAULT_LENGTH_MAX, DEFAULT_LENGTH_MIN, check_length_range, length_reward
from .args import CliError, check_length_options, option, parse_args, run_command
from .files import write_json_atomic


PROG = "llamafactory-wspo eval-xsum"
DESCRIPTION = r"""Score XSUM summaries: length statistics, the length reward, the in-range share and ROUGE.

  llamafactory-wspo eval-xsum saves/xsum/eval/qwen2-7b-wspo.jsonl
  llamafactory-wspo eval-xsum predictions.jsonl length_min=20 length_max=30 output_file=metrics.json

The input is JSONL with `predict` (a summary, or a list of summaries: all are scored, each against its prompt's
reference) and `label` (the reference), as `llamafactory-wspo generate` and LLaMA-Factory's do_predict
(generated_predictions.jsonl) write it. The metrics are printed and written as JSON, by default beside the input
with the suffix .metrics.json (saves/xsum/eval/qwen2-7b-wspo.jsonl -> saves/xsum/eval/qwen2-7b-wspo.metrics.json):
num_prompts, num_summaries; words_mean, words_median, words_std (population) of the whitespace-separated word
counts; length_reward_mean; in_range_share (length_min <= words <= length_max); rouge1, rouge2, rougeL (mean F1
in [0, 1], the rouge-score package with Porter stemming). Without rouge-score (`pip install rouge-score`, or the
package's `eval` or `paper` extra) the ROUGE keys are left out and one line on stderr says so.
"""
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_SKIPPED = "ROUGE skipped: the rouge-score package is not installed (pip install rouge-score)"


@dataclass
class EvalXsumArguments:
    predictions: str = option(help="JSONL file with `predict` (string or list of strings) and `label`.")
    length_min: int = option(DEFAULT_LENGTH_MIN, help="L_min of the length reward (words).")
    length_max: int = option(DEFAULT_LENGTH_MAX, help="L_max of the length reward (words).")
    output_file: str | None = option(
        None, help="JSON file for the metrics (default: <predictions stem>.metrics.json)."
    )

    def check(self) -> None:
        check_length_options(self.length_min, self.length_max)
        if not Path(self.predictions).is_file():
            raise CliError(f"PREDICTIONS {self.predictions}: no such file; give the generated JSONL to score")

    def metrics_path(self) -> Path:
        path = Path(self.predictions)
        return Path(self.output_file) if self.output_file else path.with_name(path.stem + ".metrics.json")


def read_predictions(path: Path) -> tuple[list[str], list[str], int]:
    r"""Summaries and their references (one pair per summary), and the number of prompts (non-empty lines)."""
    summaries, references, num_prompts = [], [], 0
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise CliError(f"{path}, line {line_number}: not valid JSON ({err})") from None
            if not isinstance(item, dict) or "predict" not in item or "label" not in item:
                raise CliError(
                    f"{path}, line {line_number}: expected an object with `predict` and `label` keys, as "
                    "`llamafactory-wspo generate` writes them"
                )
            predicts = item["predict"] if isinstance(item["predict"], list) else [item["predict"]]
            if not all(isinstance(text, str) for text in predicts) or not isinstance(item["label"], str):
                raise CliError(
                    f"{path}, line {line_number}: `predict` must be a string or a list of strings, and `label` a "
                    "string"
                )
            num_prompts += 1
            summaries += [text.strip() for text in predicts]
            references += [item["label"].strip()] * len(predicts)
    return summaries, references, num_prompts


def rouge_f1(summaries: Sequence[str], references: Sequence[str]) -> dict[str, float] | None:
    r"""Mean ROUGE-1/2/L F1 of each summary against its reference (``rouge-score``, Porter stemmer); ``None`` where
    ``rouge-score`` is not installed."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return None
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
    r"""The metrics (without ``num_prompts``) of paired summaries and references; ROUGE only where ``rouge-score``
    is installed."""
    check_length_range(length_min, length_max)
    if not summaries:
        raise CliError("no summaries to evaluate: the predictions file has no `predict` entries")
    words = [len(summary.split()) for summary in summaries]
    metrics = {
        "num_summaries": len(summaries),
        "length_min": length_min,
        "length_max": length_max,
        "words_mean": statistics.fmean(words),
        "words_median": statistics.median(words),
        "words_std": statistics.pstdev(words),
        "length_reward_mean": statistics.fmean(length_reward(summaries, length_min, length_max)),
        "in_range_share": sum(length_min <= n <= length_max for n in words) / len(words),
    }
    rouge = rouge_f1(summaries, references)
    if rouge is not None:
        metrics.update(rouge)
    return metrics


def run(args: EvalXsumArguments) -> int:
    path = Path(args.predictions)
    summaries, references, num_prompts = read_predictions(path)
    metrics = {"predictions": str(path), "num_prompts": num_prompts}
    metrics.update(evaluate(summaries, references, args.length_min, args.length_max))
    if not set(ROUGE_TYPES) <= metrics.keys():
        print(f"{PROG}: {ROUGE_SKIPPED}", file=sys.stderr)
    output = args.metrics_path()
    write_json_atomic(output, metrics)
    print(json.dumps(metrics, indent=2))
    print(f"metrics written to {output}", file=sys.stderr)
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command(
        PROG, lambda: run(parse_args(EvalXsumArguments, argv, PROG, DESCRIPTION, positionals=("predictions",)))
    )


ARGUMENTS = EvalXsumArguments  # the options of this subcommand
