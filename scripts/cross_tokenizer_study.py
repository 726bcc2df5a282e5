"""What cross-tokenizer WSPO can promise: one weak pair, two strong models, a held-out one-word preference task.

    nice python scripts/cross_tokenizer_study.py demo_runs/study       # about 5.5 CPU minutes (it prints its own)

The task: a prompt names a category (animals, fruits, ...) and asks for one word of it; the SFT data answer with a
word of the category drawn uniformly, the preference pairs prefer one fixed word per category (chosen) to any other
(rejected). Every model is tiny and trained here, offline, by ``llamafactory-cli train``:

* a weak pair on a SentencePiece-style tokenizer (``▁``-marked BPE with byte fallback, as Llama-2 and Mistral; the
  category words split into 4 to 9 pieces) and the ``llama3`` template: SFT, then DPO on the pairs;
* strong model A on the weak models' own tokenizer and template: SFT, then WSPO at γ = 1 from the weak pair;
* strong model B on a whole-word tokenizer (word-level) and the ``qwen`` template: SFT, then cross-tokenizer WSPO
  at γ = 1 from the same weak pair (``weak_template: llama3``).

Printed: each model's preference rate on held-out prompts before and after its alignment (the probability that its
answer is exactly the preferred word, end of turn included: the expected rate of sampling at temperature 1,
computed exactly rather than sampled), the probability mass on the category's words, the weak shift per word split
into its first and continuation pieces, and the weak-shift statistics that the precompute pass stored in each WSPO
run's cache manifest. Nothing is asserted: this is a study, not a test (``docs/cross_tokenizer.md`` discusses it).
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # tests.helpers (tiny models), _cli
from _cli import parse_args  # noqa: E402


CATEGORIES = {
    "animals": ("elephant", "giraffe", "penguin", "dolphin", "kangaroo", "squirrel", "octopus", "hamster"),
    "fruits": ("pineapple", "strawberry", "blueberry", "raspberry", "watermelon", "mandarin", "apricot", "coconut"),
    "colors": ("turquoise", "lavender", "crimson", "magenta", "scarlet", "emerald", "amber", "maroon"),
    "countries": ("argentina", "portugal", "australia", "indonesia", "singapore", "switzerland", "madagascar",
                  "venezuela"),
    "tools": ("screwdriver", "wrench", "hammer", "chisel", "pliers", "sandpaper", "crowbar", "toolbox"),
}  # fmt: skip
PREFERRED = {category: words[0] for category, words in CATEGORIES.items()}  # the chosen answer of every pair
ASKS = ("name one {}", "give me one of the {}", "pick a word from {}", "say one of the {}", "tell me one {}")
CONTEXTS = ("for", "a", "the", "my", "story", "poem", "game", "quiz", "song", "party", "trip", "little", "new")
WEAK_TEMPLATE, STRONG_B_TEMPLATE = "llama3", "qwen"
SP_VOCAB = 130  # SentencePiece-style vocabulary before the 256 byte tokens: most category words split into pieces


def _prompt(rng: random.Random, category: str) -> str:
    return " ".join([rng.choice(ASKS).format(category), *rng.choices(CONTEXTS, k=rng.randint(0, 4))])


def write_task(data_dir: Path, seed: int, num_train: int, num_eval: int) -> dict[str, list[dict[str, str]]]:
    r"""``one_word_sft`` (uniform answers), ``one_word_pairs`` (the preferred word against another) and the held-out
    ``one_word_eval`` prompts, whose prompts never occur in the training sets; with ``dataset_info.json``."""
    rng = random.Random(seed)
    rows: dict[str, list[dict[str, str]]] = {"one_word_sft": [], "one_word_pairs": [], "one_word_eval": []}
    seen: set[str] = set()
    for _ in range(num_train):
        category = rng.choice(list(CATEGORIES))
        prompt = _prompt(rng, category)
        seen.add(prompt)
        rows["one_word_sft"].append({"instruction": prompt, "output": rng.choice(CATEGORIES[category])})
        category = rng.choice(list(CATEGORIES))
        prompt = _prompt(rng, category)
        seen.add(prompt)
        rejected = rng.choice(CATEGORIES[category][1:])
        rows["one_word_pairs"].append({"instruction": prompt, "chosen": PREFERRED[category], "rejected": rejected})
    while len(rows["one_word_eval"]) < num_eval:
        category = rng.choice(list(CATEGORIES))
        prompt = _prompt(rng, category)
        if prompt not in seen:
            seen.add(prompt)
            rows["one_word_eval"].append({"instruction": prompt, "output": PREFERRED[category]})

    data_dir.mkdir(parents=True, exist_ok=True)
    sft = {"prompt": "instruction", "response": "output"}
    info = {
        "one_word_sft": {"file_name": "one_word_sft.json", "columns": sft},
        "one_word_pairs": {
            "file_name": "one_word_pairs.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
        },
        "one_word_eval": {"file_name": "one_word_eval.json", "columns": sft},
    }
    for name, items in rows.items():
        (data_dir / f"{name}.json").write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
    (data_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return rows


def build_models(work: Path, rows: dict[str, list[dict[str, str]]], seed: int) -> None:
    r"""``sp/`` (the SentencePiece-style tokenizer), ``word/`` (the whole-word one) and the untrained models:
    ``weak`` (hidden 32, one layer) and ``strong_a`` on ``sp``, ``strong_b`` (hidden 64, two layers both) on ``word``."""
    from tests.helpers import tiny_assets
    from tests.helpers.tiny_tokenizers import build_tokenizer

    texts = [row[key] for items in rows.values() for row in items for key in ("instruction", "output", "chosen",
             "rejected") if key in row]  # fmt: skip
    build_tokenizer("sentencepiece", texts, vocab_size=SP_VOCAB, out_dir=work / "sp")
    words = [word for text in texts for word in text.split()] + list(tiny_assets.TEMPLATE_WORDS)
    tiny_assets.build_tokenizer(work / "word", words=words, seed=seed)
    tiny_assets.build_model(work / "weak", work / "sp", hidden_size=32, num_layers=1, seed=seed)
    tiny_assets.build_model(work / "strong_a", work / "sp", hidden_size=64, num_layers=2, seed=seed)
    tiny_assets.build_model(work / "strong_b", work / "word", hidden_size=64, num_layers=2, seed=seed)


def _config(work: Path, name: str, model: str, stage: str, dataset: str, template: str, **overrides: Any) -> dict:
    config = {
        "model_name_or_path": str(work / model),
        "stage": stage,
        "do_train": True,
        "finetuning_type": "full",
        "dataset": dataset,
        "dataset_dir": str(work / "data"),
        "template": template,
        "cutoff_len": 64,
        "output_dir": str(work / name),
        "overwrite_output_dir": True,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "per_device_train_batch_size": 16,
        "num_train_epochs": 30,
        "learning_rate": 3.0e-3,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "seed": 0,
        "preprocessing_num_workers": None,
    }
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


def steps(work: Path, args: argparse.Namespace, extra_b: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    r"""The training runs, in order: (name, LLaMA-Factory config). The SFT runs fit the task (loss near log 8 per
    answer); the DPO run raises the weak model's preference rate from about 0.13 to 0.35 at its defaults."""
    weak_pair = {"weak_base_model": str(work / "weak_sft"), "weak_aligned_model": str(work / "weak_dpo")}
    wspo = {"pref_beta": args.gamma, "num_train_epochs": 2, "learning_rate": 1.0e-3}
    dpo = {"pref_beta": 0.1, "pref_loss": "sigmoid", "num_train_epochs": args.dpo_epochs}
    return [
        ("weak_sft", _config(work, "weak_sft", "weak", "sft", "one_word_sft", WEAK_TEMPLATE)),
        ("strong_a_sft", _config(work, "strong_a_sft", "strong_a", "sft", "one_word_sft", WEAK_TEMPLATE)),
        (
            "strong_b_sft",
            _config(
                work, "strong_b_sft", "strong_b", "sft", "one_word_sft", STRONG_B_TEMPLATE, num_train_epochs=40,
                learning_rate=2.0e-3,
            ),
        ),
        (
            "weak_dpo",
            _config(
                work, "weak_dpo", "weak_sft", "dpo", "one_word_pairs", WEAK_TEMPLATE, learning_rate=args.dpo_lr, **dpo
            ),
        ),
        (
            "strong_a_wspo",
            _config(
                work, "strong_a_wspo", "strong_a_sft", "wspo", "one_word_sft", WEAK_TEMPLATE,
                logps_cache_dir=str(work / "cache" / "strong_a"), **weak_pair, **wspo,
            ),
        ),
        (
            "strong_b_wspo",
            _config(
                work, "strong_b_wspo", "strong_b_sft", "wspo", "one_word_sft", STRONG_B_TEMPLATE,
                weak_template=WEAK_TEMPLATE, logps_cache_dir=str(work / "cache" / "strong_b"), **weak_pair,
                **{**wspo, **extra_b},
            ),
        ),
    ]  # fmt: skip


def train(work: Path, name: str, config: dict[str, Any]) -> float:
    r"""``llamafactory-cli train`` on ``config`` in a subprocess (log: ``logs/<name>.log``); its duration."""
    import yaml

    (work / "logs").mkdir(exist_ok=True)
    recipe = work / "logs" / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update({"WANDB_DISABLED": "true", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
    cli = Path(sys.executable).parent / "llamafactory-cli"
    started = time.perf_counter()
    with open(work / "logs" / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.run([str(cli), "train", str(recipe)], stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = (work / "logs" / f"{name}.log").read_text(encoding="utf-8")[-3000:]
        raise SystemExit(f"{name} failed ({proc.returncode}); the end of logs/{name}.log:\n{tail}")
    return time.perf_counter() - started


class Scorer:
    r"""Exact per-token log-probs of one-word answers under a model, rendered with LLaMA-Factory's template."""

    def __init__(self, model_dir: Path, template: str) -> None:
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.template = get_template_and_fix_tokenizer(self.tokenizer, DataArguments(template=template))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        self.stop = set(self.template.get_stop_token_ids(self.tokenizer))

    def answer_logps(self, prompt: str, words: list[str]) -> list[list[float]]:
        r"""Per answer: the log-prob of each token of ``word`` then of the end of turn (the first stop token)."""
        import torch

        encoded = []
        for word in words:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": word}]
            prompt_ids, response = self.template.encode_oneturn(self.tokenizer, messages)
            end = next(i for i, token in enumerate(response) if token in self.stop)
            encoded.append((prompt_ids, response[: end + 1]))
        width = max(len(p) + len(r) for p, r in encoded)
        ids = torch.full((len(words), width), self.tokenizer.pad_token_id)
        for row, (prompt_ids, response) in enumerate(encoded):
            ids[row, : len(prompt_ids) + len(response)] = torch.tensor(prompt_ids + response)
        with torch.no_grad():
            logps = self.model(ids).logits.float().log_softmax(-1)
        out = []
        for row, (prompt_ids, response) in enumerate(encoded):
            positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(response) - 1)
            out.append([logps[row, pos, token].item() for pos, token in zip(positions, response)])
        return out


def category_of(prompt: str) -> str:
    return next(category for category in CATEGORIES if category in prompt.split())


def rates(model_dir: Path, template: str, prompts: list[str]) -> dict[str, float]:
    r"""Mean over ``prompts`` of P(answer == preferred word) and of P(answer is a word of the category)."""
    import math

    scorer = Scorer(model_dir, template)
    preferred, on_task = 0.0, 0.0
    for prompt in prompts:
        words = list(CATEGORIES[category_of(prompt)])
        probs = [math.exp(sum(logps)) for logps in scorer.answer_logps(prompt, words)]
        preferred += probs[0]
        on_task += sum(probs)
    return {"preferred": preferred / len(prompts), "on_task": on_task / len(prompts)}


def shift_by_piece(work: Path, prompts: list[str]) -> dict[str, float]:
    r"""The weak shift ``log π_dpo - log π_sft`` of each answer's pieces on held-out prompts, averaged: the first piece,
    each continuation piece, the whole word (its sum), for ordinary and preferred words, and for the end of turn."""
    base, aligned = Scorer(work / "weak_sft", WEAK_TEMPLATE), Scorer(work / "weak_dpo", WEAK_TEMPLATE)
    sums: dict[str, list[float]] = {}
    for prompt in prompts:
        words = list(CATEGORIES[category_of(prompt)])
        for i, (b, a) in enumerate(zip(base.answer_logps(prompt, words), aligned.answer_logps(prompt, words))):
            kind = "preferred" if i == 0 else "ordinary"
            shift = [y - x for x, y in zip(b, a)]
            word, end = shift[:-1], shift[-1]
            sums.setdefault(f"{kind} first piece", []).append(word[0])
            sums.setdefault(f"{kind} continuation piece", []).extend(word[1:])
            sums.setdefault(f"{kind} word (sum)", []).append(sum(word))
            sums.setdefault(f"{kind} end of turn", []).append(end)
    return {key: sum(values) / len(values) for key, values in sums.items() if values}


def manifest_statistics(cache_dir: Path) -> dict[str, Any]:
    r"""The weak-shift statistics that the precompute pass stored in the cache manifest under ``cache_dir``."""
    (manifest,) = cache_dir.glob("*/manifest.json")
    return json.loads(manifest.read_text(encoding="utf-8")).get("weak_shift_statistics", {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("work_dir", help="where the task, the models and the logs go (e.g. demo_runs/study)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the untrained models")
    parser.add_argument("--gamma", type=float, default=1.0, help="γ (`pref_beta`) of both WSPO runs")
    parser.add_argument("--dpo_lr", type=float, default=3.0e-4, help="learning rate of the weak model's DPO")
    parser.add_argument("--dpo_epochs", type=float, default=1.0, help="epochs of the weak model's DPO")
    parser.add_argument("--num_train", type=int, default=800, help="prompts of the SFT set and of the pair set")
    parser.add_argument("--num_eval", type=int, default=100, help="held-out prompts")
    parser.add_argument(
        "--strong_b_option", action="append", default=[], metavar="KEY=VALUE",
        help="an extra LLaMA-Factory option of the cross-tokenizer WSPO run (repeatable)",
    )  # fmt: skip
    parser.add_argument("--skip_training", action="store_true", help="evaluate the models already in work_dir")
    args = parse_args(parser, argv)

    import yaml

    work = Path(args.work_dir).resolve()
    extra_b = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.strong_b_option)}
    rows = write_task(work / "data", args.seed, args.num_train, args.num_eval)
    if not args.skip_training:
        build_models(work, rows, args.seed)
        for name, config in steps(work, args, extra_b):
            print(f"[study] {name:<14} {train(work, name, config):6.1f} s", flush=True)

    prompts = [row["instruction"] for row in rows["one_word_eval"]]
    table = [
        ("weak (SentencePiece-style)", "weak_sft", "weak_dpo", WEAK_TEMPLATE),
        ("strong A (same tokenizer)", "strong_a_sft", "strong_a_wspo", WEAK_TEMPLATE),
        ("strong B (whole words, cross)", "strong_b_sft", "strong_b_wspo", STRONG_B_TEMPLATE),
    ]
    print(f"\npreference rate on {len(prompts)} held-out prompts (P(answer = preferred word)); P(answer in category)")
    print(f"{'model':<31}{'before':>8}{'after':>8}   {'on-task before':>14}{'after':>8}")
    for label, before, after, template in table:
        first, second = rates(work / before, template, prompts), rates(work / after, template, prompts)
        print(
            f"{label:<31}{first['preferred']:8.2f}{second['preferred']:8.2f}   "
            f"{first['on_task']:14.2f}{second['on_task']:8.2f}"
        )

    print("\nweak shift log π_dpo − log π_sft on the held-out prompts, mean per piece (nats)")
    for key, value in shift_by_piece(work, prompts).items():
        print(f"  {key:<34}{value:+7.2f}")

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(f"\nCPU time of the study: {sum(u.ru_utime + u.ru_stime for u in usage) / 60:.1f} min")
    print("\nweak-shift statistics of the precompute passes (cache manifests): mean, mean |w|, share |w| > 2")
    for run in ("strong_a", "strong_b"):
        for name, stats in manifest_statistics(work / "cache" / run).items():
            print(
                f"  {run} {name:<12} {stats['tokens']:6d} tokens  mean {stats['mean']:+6.2f}  mean |w| "
                f"{stats['mean_abs']:5.2f}  |w| > 2: {stats['share_above_2']:4.0%}"
            )


if __name__ == "__main__":
    main()
