"""Speed and memory of the WSPO and WPO stages against stock SFT and DPO, side by side in one run.

    python scripts/benchmark.py --output benchmark.json            # CPU, small random-init models (minutes)
    python scripts/benchmark.py --quick --output benchmark.json    # CI form: tiny models, a few steps
    python scripts/benchmark.py --device cuda --preset qwen2-1.5b --output benchmark_gpu.json   # bf16 on a GPU
    python scripts/benchmark.py --packing --output benchmark_packing.json   # packed against unpacked (minutes)

Every mode trains one epoch of the same data with the same strong model, through LLaMA-Factory's
``run_exp`` in a fresh subprocess (so memory figures do not mix):

=====================  =================================================================================
``sft``                stock SFT on the chosen responses
``dpo``                stock DPO (sigmoid) on the pairs, reference model at every step
``wspo``               WSPO on the chosen responses, weak shift and reference precomputed
``wspo_per_step``      WSPO computing weak base, weak aligned and reference at every step
``wpo``                WPO (sampled alignment) on the pairs, reference at every step
``wpo_precomputed``    WPO with the reference precomputed
=====================  =================================================================================

Per mode: the median step time after ``--warmup`` steps, tokens per second (non-padding input tokens that
the policy trains on), peak memory during training (process RSS sampled every 5 ms on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU; both from the start of training, so model loading and the
precompute pass do not count), the training-loop time and the whole run's time, and for precomputing modes
the precompute pass: its time and the time of the bare no-grad forwards inside it (the same models over
the same batches), whose ratio is the pass's speed relative to a bare forward. On a GPU also model FLOPs
utilisation of the policy (6 x parameters x tokens per second / ``--peak_tflops``).

Before the modes, the start-up cost of the plugin: the ``.pth`` hook runs in every Python process of the
environment, so its import time (``python -X importtime``, cumulative, fastest of ``--startup_runs``) and the
interpreter start-up (``python -c pass``, fastest run) with the plugin and with ``LLAMAFACTORY_WSPO_DISABLE=1``
are reported too (the switch leaves the hook's module imported but installs nothing).

With ``--repeats`` (default 2; 1 with ``--quick``) the modes run that many times, interleaved, and each mode's
fastest run counts (noise on a shared machine only ever adds time). The ratios and their targets are printed and written with everything else to ``--output``; ``--check``
makes the exit status 1 when a target is missed.

``--packing`` runs the packing preset instead: UltraFeedback-like lengths (:func:`long_tailed_lengths`: prompt and
responses log-normal, prompt + response averaging ``--mean_tokens``; 500 tokens at ``cutoff_len`` 2048 on a GPU,
125 at 512 on the CPU, where SDPA's dense block-diagonal mask grows with the square of the row), one epoch of
``--examples`` pairs per mode. The CPU's models (``qwen2-1.5b-quarter``) are the GPU's at a quarter of their width,
so that with the row a quarter as long a token splits its multiply-adds between attention and the dense layers as
on the GPU (:func:`flop_mix`, written to the output); ``--preset small`` gives the earlier, attention-heavy
models. Each same-tokens ratio is printed with its padding-free bound (:func:`padding_bound`). The modes:

- ``wspo_packed``, ``sft_packed``: WSPO (precomputed) and stock SFT with ``packing`` and ``neat_packing``, one
  row of ``cutoff_len`` tokens per micro-step; ``wpo_packed``: WPO (precomputed reference, sampled alignment) with
  ``packing``, pairs packed into rows;
- ``*_unpacked``: the stage unpacked at the batch that fills the same tokens per micro-step (the mean number of
  examples or pairs per packed row, rounded), stock DPO included; ``*_batch1``: unpacked at batch 1;
- ``zero3_wspo_packed``, ``zero3_wspo_batch1``: two processes under ZeRO-3 (``llamafactory-cli train`` with
  FORCE_TORCHRUN=1, ``yaml_recipes/deepspeed/ds_z3_config.json``), WSPO packed against the batch of one, each with
  the accumulation of its UltraFeedback WSPO recipe (``strong_wspo_packed.yaml``, ``strong_wspo.yaml``).

Tokens per second there counts real (non-padding) tokens: those of the steps after ``--warmup`` over the time from
the end of the warm-up to the end of the last step, data loading and collation included (the 4D mask is built in
the collator). The ZeRO-3 runs report micro-steps per rank, optimiser steps and the training loop's wall time for
the epoch (``train_runtime``). The ratios and their targets (:data:`PACKING_TARGETS`) are printed side by side and
written to ``--output``.
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # tests.helpers (tiny models), _cli
from _cli import parse_args  # noqa: E402


MODES = ("sft", "dpo", "wspo", "wspo_per_step", "wpo", "wpo_precomputed")
PRESETS: dict[str, dict[str, dict[str, int]]] = {
    # hidden, layers, heads, kv heads, intermediate; vocab of the tiny tokenizer unless given
    "tiny": {
        "strong": {"hidden_size": 32, "num_layers": 2, "num_heads": 2},
        "weak": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
    },
    "small": {
        "strong": {"hidden_size": 256, "num_layers": 4, "num_heads": 4},
        "weak": {"hidden_size": 128, "num_layers": 2, "num_heads": 2},
    },
    "qwen2-0.5b-vocab": {  # Qwen2-0.5B's width and vocabulary (896, 151,936) on 2 of its 24 layers, float32 on the CPU
        "strong": {"hidden_size": 896, "num_layers": 2, "num_heads": 14, "num_kv_heads": 2, "intermediate": 4864},
        "weak": {"hidden_size": 896, "num_layers": 1, "num_heads": 14, "num_kv_heads": 2, "intermediate": 4864},
    },
    # Qwen2-1.5B / Qwen2-0.5B at a quarter of their width and of the GPU preset's row (2048 -> 512): a token's
    # multiply-adds keep the same split between attention and the dense layers (see `flop_mix`), on 2 layers.
    "qwen2-1.5b-quarter": {
        "strong": {"hidden_size": 384, "num_layers": 2, "num_heads": 6, "num_kv_heads": 1, "intermediate": 2240},
        "weak": {"hidden_size": 224, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate": 1216},
    },
    "qwen2-1.5b": {  # Qwen2-1.5B and Qwen2-0.5B shapes (random init)
        "strong": {"hidden_size": 1536, "num_layers": 28, "num_heads": 12, "num_kv_heads": 2, "intermediate": 8960},
        "weak": {"hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2, "intermediate": 4864},
    },
}
QWEN2_VOCAB = 151936
# Presets whose prompts take about this share of each sequence's tokens (like UltraFeedback's); others: 16 words.
PROMPT_SHARE = {"qwen2-0.5b-vocab": 0.5}
FLOAT32_PRESETS = ("qwen2-0.5b-vocab",)  # CPU presets with a real vocabulary: float32 weights
TARGETS = (
    # name, numerator, denominator, comparison and bound (None: reported, no target)
    ("WSPO step / SFT step", ("wspo", "step_seconds"), ("sft", "step_seconds"), ("<=", 1.10)),
    ("WSPO peak memory / SFT's (policy alone)", ("wspo", "peak_memory_mb"), ("sft", "peak_memory_mb"), ("<=", 1.05)),
    ("WSPO total incl. precompute / per-step WSPO total", ("wspo", "total_seconds"), ("wspo_per_step", "total_seconds"), ("<=", 1.0)),
    ("WSPO peak memory / per-step WSPO's (four models)", ("wspo", "peak_memory_mb"), ("wspo_per_step", "peak_memory_mb"), None),
    ("bare forward time / precompute pass time", ("wspo", "bare_forward_seconds"), ("wspo", "precompute_seconds"), (">=", 0.9)),
    ("bare full-logits forward / precompute pass time", ("wspo", "full_logits_forward_seconds"), ("wspo", "precompute_seconds"), (">=", 1.2)),
    ("WPO step / DPO step", ("wpo", "step_seconds"), ("dpo", "step_seconds"), ("<=", 1.05)),
    ("WPO peak memory / DPO's", ("wpo", "peak_memory_mb"), ("dpo", "peak_memory_mb"), ("<=", 1.05)),
    ("WPO step, reference precomputed / DPO step", ("wpo_precomputed", "step_seconds"), ("dpo", "step_seconds"), None),
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ assets


def build_assets(
    out: Path,
    preset: str,
    num_examples: int,
    response_words: int,
    seed: int,
    lengths: list[tuple[int, int, int]] | None = None,
) -> None:
    r"""Tokenizer, strong / weak / weak-aligned models and the data sets (same prompts for every mode).

    ``lengths``: the (prompt, chosen, rejected) word counts of each example (:func:`long_tailed_lengths`) instead
    of the default spread; one word is one token of the tiny tokenizer.
    """
    from tests.helpers import tiny_assets

    tiny_assets.build_tokenizer(out / "tokenizer")
    shapes = PRESETS[preset]
    for name, shape, model_seed in (("strong", shapes["strong"], seed), ("weak", shapes["weak"], seed + 1)):
        _build_model(out / name, out / "tokenizer", shape, model_seed, preset in FLOAT32_PRESETS)
    _build_model(out / "weak_aligned", out / "tokenizer", shapes["weak"], seed + 2, preset in FLOAT32_PRESETS)

    rng = random.Random(seed)
    words = [word for word in tiny_assets.DEFAULT_WORDS if word.isalpha()]
    pairs, sft = [], []
    prompt_words = (
        max(1, round(0.55 * response_words * PROMPT_SHARE[preset] / (1 - PROMPT_SHARE[preset])))
        if preset in PROMPT_SHARE
        else 16
    )  # responses average 0.55 x response_words
    for index in range(num_examples):
        if lengths is not None:
            prompt, chosen, rejected = (" ".join(rng.choices(words, k=count)) for count in lengths[index])
        else:
            prompt = " ".join(rng.choices(words, k=prompt_words))
            # response lengths spread like real preference data (from a tenth of the budget to all of it)
            chosen = " ".join(rng.choices(words, k=rng.randint(max(1, response_words // 10), response_words)))
            rejected = " ".join(rng.choices(words, k=rng.randint(max(1, response_words // 10), response_words)))
        pairs.append({"instruction": prompt, "chosen": chosen, "rejected": rejected})
        sft.append({"instruction": prompt, "output": chosen})
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    (data / "sft.json").write_text(json.dumps(sft), encoding="utf-8")
    info = {
        "bench_sft": {"file_name": "sft.json", "columns": {"prompt": "instruction", "response": "output"}},
        "bench_pairs": {
            "file_name": "pairs.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
        },
    }
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def _build_model(out: Path, tokenizer_dir: Path, shape: dict[str, int], seed: int, float32: bool = False) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    large = shape["hidden_size"] >= 512
    config = Qwen2Config(
        vocab_size=QWEN2_VOCAB if large else len(tokenizer),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape.get("intermediate", 2 * shape["hidden_size"]),
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape.get("num_kv_heads", shape["num_heads"]),
        max_position_embeddings=4096,
        tie_word_embeddings=not large,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16" if large and not float32 else "float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if large and not float32:
        model = model.to(torch.bfloat16)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


# ------------------------------------------------------------------------------------------------ start-up


def _startup_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "LLAMAFACTORY_WSPO_DISABLE"}
    env.update(PYTHONWARNINGS="ignore", **extra)
    return env


def measure_startup(runs: int) -> dict[str, float]:
    r"""The hook's import time and the interpreter's start-up with and without the plugin, in milliseconds.

    Each figure is the fastest of ``runs`` fresh interpreters (noise on a shared machine only adds time); the
    two start-up variants alternate so that a slow phase of the machine hits both.
    """
    pattern = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|\s+llamafactory_wspo\._autoload\s*$", re.M)
    hook, plugin, disabled = [], [], []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "pass"], env=_startup_env(), capture_output=True, text=True
        )
        match = pattern.search(proc.stderr)
        if match is None:
            raise SystemExit(f"the start-up hook did not run:\n{proc.stderr[-2000:]}")
        hook.append(int(match.group(1)) / 1000)  # cumulative microseconds: the package and its start-up hook
        for times, extra in ((plugin, {}), (disabled, {"LLAMAFACTORY_WSPO_DISABLE": "1"})):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=_startup_env(**extra), check=True)
            times.append((time.perf_counter() - started) * 1000)
    return {
        "runs": runs,
        "hook_import_ms": min(hook),
        "interpreter_ms": min(plugin),
        "interpreter_disabled_ms": min(disabled),
    }


def startup_line(startup: dict[str, float]) -> str:
    return (
        f"start-up hook: {startup['hook_import_ms']:.2f} ms (python -X importtime), "
        f"{startup['interpreter_ms']:.1f} ms interpreter start with vs. {startup['interpreter_disabled_ms']:.1f} ms "
        f"without the plugin (LLAMAFACTORY_WSPO_DISABLE=1); fastest of {startup['runs']}"
    )


# ------------------------------------------------------------------------------------------------ one mode


def mode_config(mode: str, assets: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_name_or_path": str(assets / "strong"),
        "do_train": True,
        "finetuning_type": "full",
        "dataset_dir": str(assets / "data"),
        "template": "qwen",
        "cutoff_len": args.seq_len,
        "output_dir": str(work / mode),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-5,
        "num_train_epochs": 1,
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": "none",
        "disable_shuffling": True,
        "seed": 42,
        "include_num_input_tokens_seen": "non_padding",
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    if args.device == "cuda":
        config["bf16"] = True
    else:
        config["use_cpu"] = True
    pref = {"pref_beta": 0.1, "pref_loss": "sigmoid"}
    weak = {"weak_base_model": str(assets / "weak"), "weak_aligned_model": str(assets / "weak_aligned")}
    cache = {"logps_cache_dir": str(work / f"{mode}-cache")}
    if mode == "sft":
        config.update(stage="sft", dataset="bench_sft")
    elif mode == "dpo":
        config.update(stage="dpo", dataset="bench_pairs", **pref)
    elif mode in ("wspo", "wspo_per_step"):
        config.update(stage="wspo", dataset="bench_pairs", wspo_response="chosen", **pref, **weak, **cache)
        config["precompute_logps"] = mode == "wspo"
    else:
        config.update(stage="wpo", dataset="bench_pairs", wpo_alignment="sampled", **pref, **cache)
        config["precompute_logps"] = mode == "wpo_precomputed"
    return config


def precompute_passes(cache_dir: str | None) -> list[dict[str, Any]]:
    r"""Timing of each frozen model's scoring pass, as the precompute pass recorded it in its cache manifest.

    Every run gets a fresh cache folder, so a manifest there was written by this run's pass; a mode without a
    pass (stock stages, per-step modes) has none.
    """
    if not cache_dir or not os.path.isdir(cache_dir):
        return []
    passes = []
    for manifest in sorted(Path(cache_dir).glob("*/manifest.json")):
        passes.extend(json.loads(manifest.read_text(encoding="utf-8"))["passes"].values())
    return passes


def run_worker(config_path: Path, result_path: Path, device: str, threads: int) -> None:
    r"""Train one mode in this process (``--worker``) and write its measurements."""
    import psutil
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(threads)
    config = json.loads(config_path.read_text())
    process = psutil.Process()

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.step_ends: list[float] = []
            self.tokens: list[int] = []
            self.peak = 0
            self.running = False

        def _sample(self) -> None:
            while self.running:
                self.peak = max(self.peak, process.memory_info().rss)
                time.sleep(0.005)

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_started = time.perf_counter()
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.peak = process.memory_info().rss
            self.running = True
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()

        def on_step_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.step_started = time.perf_counter()
            self.tokens_before = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.step_ends.append(time.perf_counter())
            self.step_times.append(self.step_ends[-1] - self.step_started)
            self.tokens.append(state.num_input_tokens_seen - self.tokens_before)

        def on_train_end(self, args, state, control, **kwargs):
            self.train_seconds = time.perf_counter() - self.train_started
            self.running = False
            self.sampler.join()
            if device == "cuda":
                self.peak = torch.cuda.max_memory_allocated()

    from llamafactory.train.tuner import run_exp

    meter = Meter()
    real_tokens = count_real_tokens(config["model_name_or_path"])
    started = time.perf_counter()
    run_exp(config, callbacks=[meter])
    total = time.perf_counter() - started
    passes = precompute_passes(config.get("logps_cache_dir"))
    extra = full_logits_forward(config) if config.get("stage") == "wspo" and config.get("precompute_logps") else {}
    result = {
        **extra,
        "step_times": meter.step_times,
        "step_tokens": meter.tokens,
        "step_ends": [end - meter.train_started for end in meter.step_ends],
        "step_real_tokens": real_tokens["tokens"],
        "step_positions": real_tokens["positions"],
        "train_seconds": meter.train_seconds,
        "run_seconds": total,
        "peak_memory_bytes": meter.peak,
        "precompute_seconds": sum(item["seconds"] for item in passes),
        "bare_forward_seconds": sum(item["forward_seconds"] for item in passes),
        "precompute_passes": passes,
    }
    result_path.write_text(json.dumps(result, indent=2))


def count_real_tokens(tokenizer_dir: str) -> dict[str, list[int]]:
    r"""Count the real (non-padding) input tokens and all input positions of every optimiser step, in lists that
    fill as training runs.

    ``include_num_input_tokens_seen`` cannot: it sums the attention mask, which counts a packed row's padding
    (plain ``packing``) or is the 4D block-diagonal mask (``neat_packing``). This wraps the one method that fetches
    each optimiser step's micro-batches, ``Trainer.get_batch_samples`` (every trainer run here goes through it), and
    counts the positions that are not the pad token: the benchmark's data never contains it.
    """
    from transformers import AutoTokenizer, Trainer

    pad = AutoTokenizer.from_pretrained(tokenizer_dir).pad_token_id
    counts: dict[str, list[int]] = {"tokens": [], "positions": []}
    fetch = Trainer.get_batch_samples

    def get_batch_samples(self, *args, **kwargs):
        batch_samples, num_items_in_batch = fetch(self, *args, **kwargs)
        if batch_samples:
            keys = ("input_ids",) if "input_ids" in batch_samples[0] else ("chosen_input_ids", "rejected_input_ids")
            ids = [batch[key] for batch in batch_samples for key in keys]
            counts["tokens"].append(sum(int((item != pad).sum()) for item in ids))
            counts["positions"].append(sum(item.numel() for item in ids))
        return batch_samples, num_items_in_batch

    Trainer.get_batch_samples = get_batch_samples
    return counts


def full_logits_forward(config: dict[str, Any]) -> dict[str, float]:
    r"""The same frozen models over the same batches as the precompute pass, as bare no-grad forwards with full
    logits (what any stage's reference pass costs), and the share of input positions that are not scored."""
    import torch
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    from llamafactory_wspo.data import SFTDataCollatorWithLogps, check_wspo_data, dataset_splits, get_wspo_dataset
    from llamafactory_wspo.frozen import frozen_models
    from llamafactory_wspo.logps.precompute import ExampleIndex

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    pairwise = check_wspo_data(data_args, finetuning_args)
    module = get_wspo_dataset(
        template, model_args, data_args, training_args, finetuning_args, pairwise, **tokenizer_module
    )
    examples = ExampleIndex(dataset_splits(module))
    collate = SFTDataCollatorWithLogps(
        template=template, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, **tokenizer_module
    )
    order = sorted(examples.uids, key=examples.length, reverse=True)
    size = finetuning_args.precompute_batch_size or training_args.per_device_eval_batch_size
    batches = [collate([examples.feature(uid) for uid in order[i : i + size]]) for i in range(0, len(order), size)]
    seconds = 0.0
    for spec in frozen_models(model_args, finetuning_args):
        model = spec.load().eval()
        with torch.no_grad():
            for batch in batches:
                inputs = {key: batch[key].to(model.device) for key in ("input_ids", "attention_mask")}
                started = time.perf_counter()
                model(**inputs, use_cache=False)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - started
        del model
    positions = sum(examples.length(uid) for uid in examples.uids)
    return {"full_logits_forward_seconds": seconds, "unscored_share": 1 - examples.num_tokens / positions}


def summarise(mode: str, raw: dict[str, Any], warmup: int, policy_params: int, peak_tflops: float | None) -> dict:
    times = raw["step_times"][warmup:] or raw["step_times"]
    tokens = raw["step_tokens"][warmup:] or raw["step_tokens"]
    step = statistics.median(times)
    tokens_per_second = sum(tokens) / sum(times)
    summary = {
        "mode": mode,
        "steps": len(raw["step_times"]),
        "step_seconds": step,
        "tokens_per_second": tokens_per_second,
        "peak_memory_mb": raw["peak_memory_bytes"] / 2**20,
        "train_seconds": raw["train_seconds"],
        # one epoch of training plus the precompute pass (0 for the modes without one)
        "total_seconds": raw["train_seconds"] + raw["precompute_seconds"],
        "run_seconds": raw["run_seconds"],
        "precompute_seconds": raw["precompute_seconds"],
        "bare_forward_seconds": raw["bare_forward_seconds"],
        "full_logits_forward_seconds": raw.get("full_logits_forward_seconds"),
        "unscored_share": raw.get("unscored_share"),
    }
    if peak_tflops:
        summary["mfu"] = 6 * policy_params * tokens_per_second / (peak_tflops * 1e12)
    return summary


# ------------------------------------------------------------------------------------------------ packing preset


# Packed runs first: their rows give the batch that fills the same tokens per micro-step (the "unpacked" modes).
PACKING_MODES = (
    "sft_packed", "wspo_packed", "wpo_packed",
    "sft_unpacked", "sft_batch1", "wspo_unpacked", "wspo_batch1",
    "wpo_unpacked", "wpo_batch1", "dpo_unpacked", "dpo_batch1",
    "zero3_wspo_packed", "zero3_wspo_batch1",
)  # fmt: skip
PACKING_DEFAULTS = {
    # models, cutoff_len, mean tokens of prompt + response, examples (pairs), steps left out of tokens/s, runs
    "quick": {"preset": "tiny", "seq_len": 128, "mean_tokens": 40, "examples": 32, "warmup": 1, "repeats": 1},
    "cpu": {
        "preset": "qwen2-1.5b-quarter",
        "seq_len": 512,
        "mean_tokens": 125,
        "examples": 64,
        "warmup": 2,
        "repeats": 1,
    },
    "cuda": {"preset": "qwen2-1.5b", "seq_len": 2048, "mean_tokens": 500, "examples": 256, "warmup": 4, "repeats": 1},
}
# The stages' base modes, and the options of their packed form (WPO packs pairs with `packing` alone).
PACKING_BASE = {"sft": "sft", "dpo": "dpo", "wspo": "wspo", "wpo": "wpo_precomputed"}
PACKED_OPTIONS: dict[str, dict[str, bool]] = {
    "sft": {"packing": True, "neat_packing": True},
    "wspo": {"packing": True, "neat_packing": True},
    "wpo": {"packing": True},
}
LENGTH_SIGMA = 0.9  # log-normal shape of the prompt and response lengths: a long tail, mean above the median
QWEN_TURN_TOKENS = 24  # the qwen template's tokens around one turn in the tiny tokenizer (23 before the response)
ZERO3_PROCESSES = 2
ZERO3_RECIPES = {  # the UltraFeedback WSPO recipes whose gradient_accumulation_steps the ZeRO-3 runs take
    "zero3_wspo_batch1": ROOT / "yaml_recipes" / "ultrafeedback_wspo" / "instruct" / "strong_wspo.yaml",
    "zero3_wspo_packed": ROOT / "yaml_recipes" / "ultrafeedback_wspo" / "instruct" / "strong_wspo_packed.yaml",
}
SAME_TOKENS = "same tokens per micro-step"
PACKING_TARGETS = (
    # tokens/s counts real (non-padding) tokens; "unpacked" runs the batch that fills a packed row's tokens
    (f"WSPO packed / WSPO unpacked, {SAME_TOKENS}", ("wspo_packed", "tokens_per_second"), ("wspo_unpacked", "tokens_per_second"), (">=", 1.5)),
    ("WSPO packed / WSPO at batch 1", ("wspo_packed", "tokens_per_second"), ("wspo_batch1", "tokens_per_second"), (">=", 1.0)),
    ("WSPO packed / stock SFT packed", ("wspo_packed", "tokens_per_second"), ("sft_packed", "tokens_per_second"), (">=", 1.0)),
    (f"stock SFT packed / SFT unpacked, {SAME_TOKENS}", ("sft_packed", "tokens_per_second"), ("sft_unpacked", "tokens_per_second"), None),
    ("stock SFT packed / SFT at batch 1", ("sft_packed", "tokens_per_second"), ("sft_batch1", "tokens_per_second"), None),
    (f"WPO packed / WPO unpacked, {SAME_TOKENS}", ("wpo_packed", "tokens_per_second"), ("wpo_unpacked", "tokens_per_second"), (">=", 1.3)),
    ("WPO packed / WPO at batch 1", ("wpo_packed", "tokens_per_second"), ("wpo_batch1", "tokens_per_second"), None),
    (f"WPO packed / stock DPO, {SAME_TOKENS}", ("wpo_packed", "tokens_per_second"), ("dpo_unpacked", "tokens_per_second"), (">=", 1.0)),
    ("WPO packed / stock DPO at batch 1", ("wpo_packed", "tokens_per_second"), ("dpo_batch1", "tokens_per_second"), (">=", 1.0)),
    ("ZeRO-3 wall per epoch: WSPO packed / batch of one", ("zero3_wspo_packed", "train_seconds"), ("zero3_wspo_batch1", "train_seconds"), ("<=", 0.5)),
    ("ZeRO-3 micro-steps per epoch: WSPO packed / batch of one", ("zero3_wspo_packed", "micro_steps"), ("zero3_wspo_batch1", "micro_steps"), None),
)  # fmt: skip


def flop_mix(shape: dict[str, int], row: int) -> dict[str, float]:
    r"""A token's multiply-adds in one decoder layer of ``shape``, with a dense mask over a row of ``row`` tokens
    (SDPA on the CPU: every query meets every key of its row): the dense layers (q, k, v, o and the gated MLP) and
    attention (q.k and the weighted sum of v), and attention's share of the two."""
    hidden = shape["hidden_size"]
    kv = hidden // shape["num_heads"] * shape.get("num_kv_heads", shape["num_heads"])
    dense = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * shape.get("intermediate", 2 * hidden)
    attention = 2 * row * hidden
    return {"dense": dense, "attention": attention, "attention_share": attention / (dense + attention)}


def padding_bound(results: dict[str, dict[str, Any]], num_mode: str, den_mode: str) -> float | None:
    r"""What removing padding alone can give a tokens/s ratio: the positions per real token of ``den_mode`` over
    those of ``num_mode`` (the ratio if every position cost the same and nothing else did)."""
    num, den = results.get(num_mode, {}), results.get(den_mode, {})
    if "padding_share" not in num or "padding_share" not in den:
        return None
    return (1 - num["padding_share"]) / (1 - den["padding_share"])


def long_tailed_lengths(
    num: int,
    mean_tokens: float,
    cutoff_len: int,
    seed: int,
    overhead: int = QWEN_TURN_TOKENS,
    sigma: float = LENGTH_SIGMA,
) -> list[tuple[int, int, int]]:
    r"""The (prompt, chosen, rejected) content lengths in tokens of ``num`` pairs with UltraFeedback-like lengths.

    The prompt and each response are drawn log-normal with shape ``sigma``, each with mean
    ``(mean_tokens - overhead) / 2``, so that a prompt and its response, with the template's ``overhead`` tokens
    around one turn, average about ``mean_tokens`` tokens, with a long tail (the mean above the median). A pair
    whose prompt and longer response would exceed ``cutoff_len`` is shortened to fit, prompt and responses in
    proportion, as truncation at ``cutoff_len`` would.
    """
    import math

    rng = random.Random(seed)
    mu = math.log((mean_tokens - overhead) / 2) - sigma**2 / 2  # a log-normal's mean is exp(mu + sigma^2 / 2)
    lengths = []
    for _ in range(num):
        prompt, chosen, rejected = (max(1, round(rng.lognormvariate(mu, sigma))) for _ in range(3))
        longest = prompt + max(chosen, rejected)
        if overhead + longest > cutoff_len:
            scale = (cutoff_len - overhead) / longest
            prompt, chosen, rejected = (max(1, int(count * scale)) for count in (prompt, chosen, rejected))
        lengths.append((prompt, chosen, rejected))
    return lengths


def length_stats(lengths: list[tuple[int, int, int]], overhead: int = QWEN_TURN_TOKENS) -> dict[str, float]:
    r"""Mean, median, 90th and 99th percentile and maximum of prompt + chosen response in tokens, with the
    template's tokens; the mean of a pair's two sequences together."""
    totals = sorted(overhead + prompt + chosen for prompt, chosen, _ in lengths)
    pairs = [2 * (overhead + prompt) + chosen + rejected for prompt, chosen, rejected in lengths]

    def quantile(share: float) -> int:
        return totals[min(len(totals) - 1, int(share * len(totals)))]

    return {
        "mean": statistics.mean(totals),
        "median": statistics.median(totals),
        "p90": quantile(0.9),
        "p99": quantile(0.99),
        "max": totals[-1],
        "pair_mean": statistics.mean(pairs),
    }


def packing_config(mode: str, batch: int, assets: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    r"""The run of one packing mode: its stage's base mode at ``batch`` examples (packed: rows) per micro-step."""
    stage, layout = mode.removeprefix("zero3_").rsplit("_", 1)
    config = mode_config(PACKING_BASE[stage], assets, work, args)
    config.update(
        output_dir=str(work / mode),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,  # the precompute pass scores in batches of the same shape
    )
    if "logps_cache_dir" in config:
        config["logps_cache_dir"] = str(work / f"{mode}-cache")  # a fresh cache: every run times its own pass
    if layout == "packed":
        config.update(PACKED_OPTIONS[stage])
    if args.device == "cuda":
        config["flash_attn"] = args.attention
    if mode.startswith("zero3_"):
        import yaml

        recipe = yaml.safe_load(ZERO3_RECIPES[mode].read_text(encoding="utf-8"))
        config.pop("use_cpu", None)  # DeepSpeed's CPU accelerator
        config.update(
            deepspeed=str(ROOT / "yaml_recipes" / "deepspeed" / "ds_z3_config.json"),
            gradient_accumulation_steps=recipe["gradient_accumulation_steps"],
        )
    return {key: value for key, value in config.items() if value is not None}


def summarise_packing(mode: str, raw: dict[str, Any], warmup: int, examples: int, batch: int) -> dict[str, Any]:
    r"""Tokens per second of one run: the real tokens of the steps after ``warmup`` over the time from the end of
    the last warm-up step to the end of the last step (data loading and collation included)."""
    ends, tokens, positions = raw["step_ends"], raw["step_real_tokens"], raw["step_positions"]
    if len(tokens) != len(ends):
        raise SystemExit(f"{mode}: {len(tokens)} counted batches for {len(ends)} steps")
    skip = min(warmup, len(ends) - 1)
    seconds = ends[-1] - (ends[skip - 1] if skip else 0.0)
    return {
        "mode": mode,
        "packed": mode.endswith("_packed"),
        "batch_size": batch,
        "steps": len(ends),  # = micro-steps: one micro-batch per optimiser step
        "examples_per_micro_step": examples / len(ends),
        "tokens_per_micro_step": statistics.mean(tokens),
        "padding_share": 1 - sum(tokens) / sum(positions),
        "epoch_tokens": sum(tokens),
        "tokens_per_second": sum(tokens[skip:]) / seconds,
        "step_seconds": statistics.median(raw["step_times"][skip:]),
        "train_seconds": raw["train_seconds"],
        "run_seconds": raw["run_seconds"],
        "precompute_seconds": raw["precompute_seconds"],
        "peak_memory_mb": raw["peak_memory_bytes"] / 2**20,
    }


def run_zero3(
    mode: str, config: dict[str, Any], workdir: Path, env: dict[str, str], threads: int, examples: int
) -> dict[str, Any]:
    r"""One epoch through ``llamafactory-cli train`` with FORCE_TORCHRUN=1 in ``ZERO3_PROCESSES`` processes: its
    micro-steps per rank (the rows the trainer reports, over the processes and the batch), optimiser steps and the
    training loop's wall time (``train_runtime``), and the whole command's."""
    import math
    import shutil
    import socket

    import yaml

    recipe = workdir / f"{mode}.yaml"
    recipe.write_text(yaml.safe_dump(config), encoding="utf-8")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli = Path(sys.executable).parent / "llamafactory-cli"
    env = dict(
        env,
        FORCE_TORCHRUN="1",
        NPROC_PER_NODE=str(ZERO3_PROCESSES),
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(max(1, threads // ZERO3_PROCESSES)),
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [str(cli) if cli.exists() else shutil.which("llamafactory-cli") or "llamafactory-cli", "train", str(recipe)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    run_seconds = time.perf_counter() - started
    output = proc.stdout + proc.stderr
    (workdir / f"{mode}.log").write_text(output)
    if proc.returncode != 0:
        print(output[-4000:], file=sys.stderr)
        raise SystemExit(f"mode {mode} failed; log: {workdir / f'{mode}.log'}")
    rows = re.search(r"Num examples = ([\d,]+)", output)
    if rows is None:
        raise SystemExit(f"mode {mode}: the trainer's 'Num examples' line is missing; log: {workdir / f'{mode}.log'}")
    rows = int(rows.group(1).replace(",", ""))
    state = json.loads((Path(config["output_dir"]) / "trainer_state.json").read_text())
    (final,) = [entry for entry in state["log_history"] if "train_runtime" in entry]
    micro_steps = math.ceil(rows / (ZERO3_PROCESSES * config["per_device_train_batch_size"]))
    accumulation = config["gradient_accumulation_steps"]
    if state["global_step"] != math.ceil(micro_steps / accumulation):
        raise SystemExit(f"mode {mode}: {state['global_step']} optimiser steps for {micro_steps} micro-steps")
    return {
        "mode": mode,
        "packed": mode.endswith("_packed"),
        "processes": ZERO3_PROCESSES,
        "rows": rows,
        "micro_steps": micro_steps,  # per rank
        "gradient_accumulation_steps": accumulation,
        "optimiser_steps": state["global_step"],
        "examples_per_optimiser_step": examples / state["global_step"],
        "train_seconds": final["train_runtime"],  # one epoch
        "run_seconds": run_seconds,  # the whole command: start-up, data, precompute pass, training, saving
    }


def run_packing(args: argparse.Namespace, argv: list[str] | None) -> int:
    r"""The packing preset: every mode of ``--modes`` (default :data:`PACKING_MODES`), its ratios and targets."""
    modes = [mode for mode in PACKING_MODES if mode in args.modes]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="wspo-bench-packing-"))
    workdir.mkdir(parents=True, exist_ok=True)
    assets = workdir / "assets"
    lengths = long_tailed_lengths(args.examples, args.mean_tokens, args.seq_len, seed=0)
    stats = length_stats(lengths)
    print(f"building {args.preset} assets in {assets} ...", flush=True)
    build_assets(assets, args.preset, args.examples, 0, seed=0, lengths=lengths)
    policy_params = _count_params(assets / "strong")
    if args.device == "cuda":
        import importlib.util

        import torch

        args.attention = "fa2" if importlib.util.find_spec("flash_attn") else "sdpa"
        if torch.cuda.device_count() < ZERO3_PROCESSES:
            skipped = [mode for mode in modes if mode.startswith("zero3_")]
            print(f"skipping {skipped}: {ZERO3_PROCESSES} GPUs needed", flush=True)
            modes = [mode for mode in modes if mode not in skipped]

    # The batch that fills the same tokens per micro-step as a packed row: the mean examples per packed row, from
    # the packed run; without one, the row's length over the mean example (estimated).
    estimate = {"sft": args.seq_len / stats["mean"], "pairs": args.seq_len / stats["pair_mean"]}
    per_row: dict[str, float] = {}
    env = worker_env(args.threads)
    results: dict[str, dict[str, Any]] = {}
    for repeat, mode in [(repeat, mode) for repeat in range(args.repeats) for mode in modes]:
        runs = workdir / "runs" / f"repeat-{repeat}"
        stage, layout = mode.removeprefix("zero3_").rsplit("_", 1)
        data = "pairs" if stage in ("wpo", "dpo") else "sft"
        batch = 1 if layout != "unpacked" else max(1, round(per_row.get(data, estimate[data])))
        config = packing_config(mode, batch, assets, runs, args)
        print(f"running {mode} at batch {batch} ({repeat + 1}/{args.repeats}) ...", flush=True)
        if mode.startswith("zero3_"):
            summary = run_zero3(mode, config, workdir, env, args.threads, args.examples)
            faster = "train_seconds"
        else:
            summary = summarise_packing(mode, run_mode(mode, repeat, config, workdir, args, env), args.warmup,
                                        args.examples, batch)  # fmt: skip
            faster = "tokens_per_second"
            if layout == "packed":
                per_row.setdefault(data, summary["examples_per_micro_step"])
        summary["repeats"] = [*results.get(mode, {}).get("repeats", []), summary.copy()]
        better = mode in results and (summary[faster] < results[mode][faster]) == (faster == "train_seconds")
        if mode not in results or better:
            results[mode] = summary  # the fastest repeat
        else:
            results[mode]["repeats"] = summary["repeats"]

    rows = ratios(results, PACKING_TARGETS)
    for row in rows:  # the same stage packed and unpacked: what removing the padding alone can give
        num_mode, den_mode = row["modes"]
        if SAME_TOKENS in row["ratio"] and num_mode.split("_")[0] == den_mode.split("_")[0]:
            row["padding_bound"] = padding_bound(results, num_mode, den_mode)
    setup = {
        "device": args.device,
        "device_name": _device_name(args.device),
        "preset": args.preset,
        "models": PRESETS[args.preset],
        "policy_parameters": policy_params,
        "attention": getattr(args, "attention", "sdpa"),  # LLaMA-Factory's default on the CPU: SDPA, 4D masks
        # a policy token's multiply-adds per layer at a packed row's length, the mask dense (SDPA's 4D mask)
        "flop_mix": flop_mix(PRESETS[args.preset]["strong"], args.seq_len),
        "cutoff_len": args.seq_len,
        "examples": args.examples,
        "lengths": {"distribution": f"log-normal, sigma {LENGTH_SIGMA}, prompt and each response", **stats},
        "tokens_per_second": "real (non-padding) tokens of the steps after the warm-up over their wall time, data "
        "loading and collation included",
        "examples_per_packed_row": per_row,
        "same_tokens_batch": {data: max(1, round(per_row.get(data, estimate[data]))) for data in ("sft", "pairs")},
        "same_tokens_batch_source": {data: "measured" if data in per_row else "estimated" for data in estimate},
        "warmup": args.warmup,
        "threads": args.threads,
        "repeats": args.repeats,
        "command": " ".join(["python", "scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    header = (
        f"{setup['device_name']}, packing preset: {args.preset} models ({policy_params / 1e6:.2f}M-parameter policy), "
        f"cutoff {args.seq_len}, {args.examples} examples of {stats['mean']:.0f} tokens on average (median "
        f"{stats['median']:.0f}, 99th percentile {stats['p99']}, max {stats['max']}), {args.threads} threads, "
        f"fastest of {args.repeats} runs per mode"
    )
    print_packing_report(results, rows, header, setup["command"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"setup": setup, "results": results, "ratios": rows}, indent=2))
    print(f"\nwrote {args.output}")
    return 1 if args.check and any(row["pass"] is False for row in rows) else 0


def print_packing_report(
    results: dict[str, dict[str, Any]], rows: list[dict[str, Any]], header: str, command: str
) -> None:
    print(f"\n{header}\n{command}\n")
    one = {mode: item for mode, item in results.items() if "processes" not in item}
    if one:
        print(
            f"{'mode':<20}{'batch':>6}{'micro-steps':>12}{'tokens/micro-step':>18}{'padding':>9}{'tokens/s':>10}"
            f"{'train s':>9}{'precompute s':>14}{'peak MB':>9}"
        )
    for mode, item in one.items():
        print(
            f"{mode:<20}{item['batch_size']:>6}{item['steps']:>12}{item['tokens_per_micro_step']:>18.0f}"
            f"{item['padding_share']:>9.1%}{item['tokens_per_second']:>10.0f}{item['train_seconds']:>9.2f}"
            f"{item['precompute_seconds']:>14.2f}{item['peak_memory_mb']:>9.0f}"
        )
    zero3 = {mode: item for mode, item in results.items() if "processes" in item}
    if zero3:
        print(
            f"\n{'ZeRO-3, ' + str(ZERO3_PROCESSES) + ' processes':<20}{'micro-steps/rank':>17}{'accumulation':>13}"
            f"{'optimiser steps':>16}{'examples/step':>14}{'wall s/epoch':>13}{'command s':>10}"
        )
        for mode, item in zero3.items():
            print(
                f"{mode:<20}{item['micro_steps']:>17}{item['gradient_accumulation_steps']:>13}"
                f"{item['optimiser_steps']:>16}{item['examples_per_optimiser_step']:>14.1f}{item['train_seconds']:>13.2f}"
                f"{item['run_seconds']:>10.1f}"
            )
    print()
    width = max((len(row["ratio"]) for row in rows), default=0) + 2
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        verdict = "" if row["target"] is None else f"target {row['target']:<7} {'PASS' if row['pass'] else 'FAIL'}"
        bound = f"  (padding-free bound {row['padding_bound']:.3f})" if row.get("padding_bound") else ""
        print(f"{row['ratio']:<{width}}{value:>8}  {verdict}{bound}")


# ------------------------------------------------------------------------------------------------ driver


def ratios(results: dict[str, dict[str, Any]], targets: tuple = TARGETS) -> list[dict[str, Any]]:
    rows = []
    for name, (num_mode, num_key), (den_mode, den_key), bound in targets:
        if num_mode not in results or den_mode not in results:
            continue
        num, den = results[num_mode].get(num_key), results[den_mode].get(den_key)
        value = num / den if num is not None and den else None
        row = {"ratio": name, "modes": [num_mode, den_mode], "value": value, "target": None, "pass": None}
        if bound is not None:
            op, limit = bound
            row["target"] = f"{op} {limit}"
            row["pass"] = value is not None and (value <= limit if op == "<=" else value >= limit)
        rows.append(row)
    return rows


def print_report(
    results: dict[str, dict[str, Any]], rows: list[dict[str, Any]], header: str, startup: dict[str, float]
) -> None:
    print(f"\n{header}\n")
    print(startup_line(startup) + "\n")
    has_mfu = any("mfu" in item for item in results.values())
    print(
        f"{'mode':<17}{'step s (median)':>16}{'tokens/s':>11}{'peak MB':>10}{'train s':>9}{'precompute s':>14}"
        + (f"{'MFU':>7}" if has_mfu else "")
    )
    for mode, item in results.items():
        line = (
            f"{mode:<17}{item['step_seconds']:>16.4f}{item['tokens_per_second']:>11.0f}{item['peak_memory_mb']:>10.0f}"
            f"{item['train_seconds']:>9.2f}{item['precompute_seconds']:>14.2f}"
        )
        print(line + (f"{item.get('mfu', 0):>7.1%}" if has_mfu else ""))
    print()
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        verdict = "" if row["target"] is None else f"target {row['target']:<7} {'PASS' if row['pass'] else 'FAIL'}"
        print(f"{row['ratio']:<52}{value:>8}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("benchmark.json"), help="JSON file of the results.")
    parser.add_argument("--quick", action="store_true", help="CI form: tiny models, 4 steps, short sequences.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None, help="Model shapes (default: small).")
    parser.add_argument("--packing", action="store_true", help="The packing preset (see the module's docstring).")
    parser.add_argument("--modes", default=None, help="Comma-separated subset of the modes (default: all).")
    parser.add_argument("--steps", type=int, default=None, help="Steps per epoch (= examples / batch size).")
    parser.add_argument("--warmup", type=int, default=None, help="Steps left out of the median.")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--seq_len", type=int, default=None, help="cutoff_len; responses fill most of it.")
    parser.add_argument("--repeats", type=int, default=None, help="Runs per mode, interleaved; the fastest counts.")
    parser.add_argument("--examples", type=int, default=None, help="--packing: examples (pairs) in the epoch.")
    parser.add_argument("--mean_tokens", type=int, default=None, help="--packing: mean prompt + response tokens.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU; default: all cores).")
    parser.add_argument("--startup_runs", type=int, default=None, help="Interpreters started to time the hook.")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Gradient checkpointing in every mode.")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="Peak bf16 TFLOP/s for MFU (H100: 989).")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the assets and runs in this folder.")
    parser.add_argument("--check", action="store_true", help="Exit with status 1 if a target is missed.")
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("CONFIG", "RESULT"), help=argparse.SUPPRESS)
    args = parse_args(parser, argv)

    defaults = (
        {"preset": "tiny", "steps": 4, "warmup": 1, "batch_size": 2, "seq_len": 64, "repeats": 1}
        if args.quick
        else {"preset": "small", "steps": 16, "warmup": 4, "batch_size": 8, "seq_len": 256, "repeats": 2}
    )
    defaults["startup_runs"] = 5 if args.quick else 20
    if args.device == "cuda":
        defaults.update(preset="qwen2-1.5b", batch_size=4, seq_len=1024, steps=20, warmup=5)
    if args.packing:
        defaults.update(PACKING_DEFAULTS["quick" if args.quick else args.device], batch_size=1)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.threads = args.threads or (os.cpu_count() or 1)
    args.gradient_checkpointing = args.gradient_checkpointing or None

    if args.worker:
        run_worker(*args.worker, device=args.device, threads=args.threads)
        return 0

    known = PACKING_MODES if args.packing else MODES
    modes = [mode.strip() for mode in (args.modes or ",".join(known)).split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(known))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(known)}.")
    if args.packing:
        args.modes = modes
        return run_packing(args, argv)
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be smaller than --steps ({args.steps}).")

    print(f"timing the start-up hook ({args.startup_runs} interpreters) ...", flush=True)
    startup = measure_startup(args.startup_runs)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="wspo-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    assets = workdir / "assets"
    # responses fill most of cutoff_len: about 1 token per word in the tiny tokenizer
    share = PROMPT_SHARE.get(args.preset, 0.0)
    response_words = max(12, int((args.seq_len - 40) / (1 + 0.55 * share / (1 - share))))
    print(f"building {args.preset} assets in {assets} ...", flush=True)
    build_assets(assets, args.preset, args.steps * args.batch_size, response_words, seed=0)
    policy_params = _count_params(assets / "strong")

    env = worker_env(args.threads)
    results: dict[str, dict[str, Any]] = {}
    for repeat, mode in [(repeat, mode) for repeat in range(args.repeats) for mode in modes]:
        # a fresh cache folder per run: a repeat must compute the pass again, not reuse the first run's cache
        runs = workdir / "runs" / f"repeat-{repeat}"
        config = {k: v for k, v in mode_config(mode, assets, runs, args).items() if v is not None}
        print(f"running {mode} ({repeat + 1}/{args.repeats}) ...", flush=True)
        raw = run_mode(mode, repeat, config, workdir, args, env)
        peak = args.peak_tflops if args.device == "cuda" else None
        summary = summarise(mode, raw, args.warmup, policy_params, peak)
        summary["repeats"] = [*results.get(mode, {}).get("repeats", []), summary.copy()]
        if mode not in results or summary["step_seconds"] < results[mode]["step_seconds"]:
            results[mode] = summary  # the fastest repeat: timing noise on a shared machine only adds time
        else:
            results[mode]["repeats"] = summary["repeats"]

    rows = ratios(results)
    h = output_layer_share(assets / "strong")
    p = results.get("wspo", {}).get("unscored_share")
    bound = {"output_layer_share": h, "unscored_share": p, "wspo_over_sft_bound": None if p is None else 1 - h * p}
    setup = {
        "device": args.device,
        "device_name": _device_name(args.device),
        "preset": args.preset,
        "models": PRESETS[args.preset],
        "policy_parameters": policy_params,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "repeats": args.repeats,
        "command": " ".join(["python", "scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    header = (
        f"{setup['device_name']}, preset {args.preset} ({policy_params / 1e6:.2f}M-parameter policy), "
        f"batch {args.batch_size}, cutoff {args.seq_len}, {args.steps} steps ({args.warmup} warm-up), "
        f"{args.threads} threads, fastest of {args.repeats} runs per mode"
    )
    print_report(results, rows, header, startup)
    if p is not None:
        print(
            f"output layer's share of the policy's weight FLOPs h = {h:.3f}, unscored share of positions p = {p:.3f}: "
            f"a WSPO step can cost at best 1 - h*p = {1 - h * p:.3f} of an SFT step"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"setup": setup, "startup": startup, "results": results, "ratios": rows, "bound": bound}
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}")
    return 1 if args.check and any(row["pass"] is False for row in rows) else 0


def worker_env(threads: int) -> dict[str, str]:
    r"""The environment of every run: offline, plugin enabled, ``threads`` threads, no torchrun."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FORCE_TORCHRUN", "NPROC"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_DISABLED="true",
        OMP_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
    )
    env.pop("LLAMAFACTORY_WSPO_DISABLE", None)
    return env


def run_mode(
    mode: str, repeat: int, config: dict[str, Any], workdir: Path, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    r"""Train ``config`` in a fresh worker process (``run_exp``) and return its raw measurements."""
    config_path = workdir / f"{mode}.config.json"
    result_path = workdir / f"{mode}.result-{repeat}.json"
    config_path.write_text(json.dumps(config, indent=2))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(config_path), str(result_path), "--device", args.device,
         "--threads", str(args.threads)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    (workdir / f"{mode}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"mode {mode} failed; log: {workdir / f'{mode}.log'}")
    return json.loads(result_path.read_text())


def output_layer_share(model_dir: Path) -> float:
    r"""The output layer's share of the weight FLOPs of a forward pass: its matrix against every matrix multiplied
    per token (the input embedding is a lookup; norms and biases are negligible)."""
    from safetensors import safe_open

    matmul, output = 0, 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                if len(shape) != 2 or "embed_tokens" in name:
                    continue
                matmul += _numel(shape)
                output += _numel(shape) if name.startswith("lm_head") else 0
    return output / matmul if matmul else 0.0


def _count_params(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():
                total += _numel(handle.get_slice(name).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


if __name__ == "__main__":
    sys.exit(main())
