"""Score the quickstart's models on held-out prompts: length of sampled answers, share of short ones, on-topic words.

    python scripts/demo/evaluate.py --data demo_runs/assets/data/tiny_sft_eval.json \
        --model "weak SFT=demo_runs/weak_sft" --model "weak DPO=demo_runs/weak_dpo" ... --plot out.png
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from llamafactory_wspo.extras.tiny_assets import CATEGORIES


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli import parse_args  # noqa: E402


def load_prompts(data_file: str) -> list[str]:
    """The ``instruction`` (plus ``input``) of each row of an alpaca-format JSON file."""
    rows = json.loads(Path(data_file).read_text(encoding="utf-8"))
    return [" ".join(filter(None, (row["instruction"], row.get("input")))) for row in rows]


def category_of(prompt: str) -> str:
    return next(word for word in prompt.split() if word in CATEGORIES)


@torch.inference_mode()
def sample_answers(
    model_dir: str, prompts: list[str], num_samples: int, max_new_tokens: int, seed: int, template: str = "qwen"
) -> list[str]:
    """``num_samples`` answers per prompt (sampling at temperature 1), formatted with LLaMA-Factory's ``template``."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    encoded = [
        template.encode_oneturn(tokenizer, [{"role": "user", "content": p}, {"role": "assistant", "content": ""}])[0]
        for p in prompts
        for _ in range(num_samples)
    ]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
    torch.manual_seed(seed)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=(input_ids != pad).long(),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    return tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)


def score(prompts: list[str], answers: list[str], short_max: int) -> dict[str, float]:
    """Mean length in words, percentage of answers with at most ``short_max`` words, percentage of on-topic words."""
    num_samples = len(answers) // len(prompts)
    lengths, on_topic = [], 0
    for i, answer in enumerate(answers):
        words = answer.split()
        lengths.append(len(words))
        on_topic += sum(word in CATEGORIES[category_of(prompts[i // num_samples])] for word in words)

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
    parser.add_argument("--data", required=True, help="alpaca-format JSON file with the held-out prompts")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="repeatable")
    parser.add_argument("--num_samples", type=int, default=4, help="answers sampled per prompt")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--short_max", type=int, default=5, help="the longest answer counted as short")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--template", action="append", metavar="NAME=TEMPLATE", default=[],
        help="chat template of the model NAME (repeatable; default qwen)",
    )  # fmt: skip
    parser.add_argument("--plot", help="where to save a PNG bar plot")
    parser.add_argument("--json", help="where to save the scores as JSON")
    args = parse_args(parser)

    torch.set_num_threads(1)
    prompts = load_prompts(args.data)
    templates = dict(spec.split("=", 1) for spec in args.template)
    results = {}
    for spec in args.model:
        name, model_dir = spec.split("=", 1)
        template = templates.get(name, "qwen")
        answers = sample_answers(model_dir, prompts, args.num_samples, args.max_new_tokens, args.seed, template)
        results[name] = score(prompts, answers, args.short_max)

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
