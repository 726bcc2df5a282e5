"""Score the quickstart's models from the answers that `llamafactory-wspo generate` sampled on the held-out prompts:
mean length in words, share of short answers, share of on-topic words.

    python scripts/demo/evaluate.py --answers "weak SFT=demo_runs/answers/weak_sft.jsonl" \
        --answers "weak DPO=demo_runs/answers/weak_dpo.jsonl" ... --json out.json --plot out.png
"""

import argparse
import json
import sys
from pathlib import Path


sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]
from _cli import parse_args  # noqa: E402

from tests.helpers.tiny_assets import CATEGORIES  # noqa: E402


def read_answers(path: str | Path) -> list[tuple[str, list[str]]]:
    r"""Each prompt of a ``llamafactory-wspo generate`` output file with its answers: (instruction, samples)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{path}: no answers")
    return [
        (row["instruction"], row["predict"] if isinstance(row["predict"], list) else [row["predict"]]) for row in rows
    ]


def category_of(prompt: str) -> str:
    return next(word for word in prompt.split() if word in CATEGORIES)


def score(answers: list[tuple[str, list[str]]], short_max: int) -> dict[str, float]:
    r"""Mean length in words, percentage of answers with at most ``short_max`` words, percentage of on-topic words
    (those of the prompt's category) over every sample of every prompt."""
    lengths, on_topic = [], 0
    for prompt, samples in answers:
        category = CATEGORIES[category_of(prompt)]
        for sample in samples:
            words = sample.split()
            lengths.append(len(words))
            on_topic += sum(word in category for word in words)

    return {
        "mean_words": sum(lengths) / len(lengths),
        "short_pct": 100 * sum(n <= short_max for n in lengths) / len(lengths),
        "on_topic_pct": 100 * on_topic / max(sum(lengths), 1),
    }


def plot(results: dict[str, dict[str, float]], short_max: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    colors = ["#9ecae1" if name.startswith("weak") else "#3182bd" for name in names]
    panels = [
        ("mean_words", "mean answer length (words)"),
        ("short_pct", f"answers with <= {short_max} words (%)"),
        ("on_topic_pct", "on-topic words (%)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4.2))
    for ax, (key, title) in zip(axes, panels):
        values = [results[name][key] for name in names]
        bars = ax.bar(names, values, color=colors, edgecolor="black")
        ax.bar_label(bars, fmt="%.1f")
        ax.set_title(title)
        ax.set_ylim(0, max(values) * 1.15)
        ax.tick_params(axis="x", labelrotation=20)

    fig.suptitle("Weak-to-strong preference optimization on a toy task: prefer short answers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--answers", action="append", required=True, metavar="NAME=FILE",
        help="a model's name and the JSONL file that `llamafactory-wspo generate` wrote for it (repeatable)",
    )  # fmt: skip
    parser.add_argument("--short_max", type=int, default=5, help="the longest answer counted as short")
    parser.add_argument("--plot", help="where to save a PNG bar plot")
    parser.add_argument("--json", help="where to save the scores as JSON")
    args = parse_args(parser)

    answers = {name: read_answers(path) for name, path in (spec.split("=", 1) for spec in args.answers)}
    prompts = {name: [prompt for prompt, _ in rows] for name, rows in answers.items()}
    first = next(iter(prompts))
    for name in prompts:
        if prompts[name] != prompts[first]:
            raise SystemExit(f"the answers of {name!r} and {first!r} are to different prompts")
    results = {name: score(rows, args.short_max) for name, rows in answers.items()}

    print(f"{'model':<14}{'mean words':>12}{f'<= {args.short_max} words':>14}{'on-topic':>10}")
    for name, res in results.items():
        print(f"{name:<14}{res['mean_words']:>12.2f}{res['short_pct']:>13.1f}%{res['on_topic_pct']:>9.1f}%")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    if args.plot:
        plot(results, args.short_max, args.plot)
        print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
