"""Speed and memory of the WSPO and WPO stages against stock SFT and DPO, side by side in one run.

    python scripts/benchmark.py --output benchmark.json            # CPU, small random-init models (minutes)
    python scripts/benchmark.py --quick --output benchmark.json    # CI form: tiny models, a few steps
    python scripts/benchmark.py --device cuda --preset qwen2-1.5b --output benchmark_gpu.json   # bf16 on a GPU

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


def build_assets(out: Path, preset: str, num_examples: int, response_words: int, seed: int) -> None:
    r"""Tokenizer, strong / weak / weak-aligned models and the data sets (same prompts for every mode)."""
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
    for _ in range(num_examples):
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
            self.step_times.append(time.perf_counter() - self.step_started)
            self.tokens.append(state.num_input_tokens_seen - self.tokens_before)

        def on_train_end(self, args, state, control, **kwargs):
            self.train_seconds = time.perf_counter() - self.train_started
            self.running = False
            self.sampler.join()
            if device == "cuda":
                self.peak = torch.cuda.max_memory_allocated()

    from llamafactory.train.tuner import run_exp

    meter = Meter()
    started = time.perf_counter()
    run_exp(config, callbacks=[meter])
    total = time.perf_counter() - started
    passes = precompute_passes(config.get("logps_cache_dir"))
    extra = full_logits_forward(config) if config.get("stage") == "wspo" and config.get("precompute_logps") else {}
    result = {
        **extra,
        "step_times": meter.step_times,
        "step_tokens": meter.tokens,
        "train_seconds": meter.train_seconds,
        "run_seconds": total,
        "peak_memory_bytes": meter.peak,
        "precompute_seconds": sum(item["seconds"] for item in passes),
        "bare_forward_seconds": sum(item["forward_seconds"] for item in passes),
        "precompute_passes": passes,
    }
    result_path.write_text(json.dumps(result, indent=2))


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


# ------------------------------------------------------------------------------------------------ driver


def ratios(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, (num_mode, num_key), (den_mode, den_key), bound in TARGETS:
        if num_mode not in results or den_mode not in results:
            continue
        num, den = results[num_mode].get(num_key), results[den_mode].get(den_key)
        value = num / den if num is not None and den else None
        if bound is None:
            rows.append({"ratio": name, "value": value, "target": None, "pass": None})
            continue
        op, limit = bound
        passed = value is not None and (value <= limit if op == "<=" else value >= limit)
        rows.append({"ratio": name, "value": value, "target": f"{op} {limit}", "pass": passed})
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
    parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated subset of the modes.")
    parser.add_argument("--steps", type=int, default=None, help="Steps per epoch (= examples / batch size).")
    parser.add_argument("--warmup", type=int, default=None, help="Steps left out of the median.")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--seq_len", type=int, default=None, help="cutoff_len; responses fill most of it.")
    parser.add_argument("--repeats", type=int, default=None, help="Runs per mode, interleaved; the fastest counts.")
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
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.threads = args.threads or (os.cpu_count() or 1)
    args.gradient_checkpointing = args.gradient_checkpointing or None

    if args.worker:
        run_worker(*args.worker, device=args.device, threads=args.threads)
        return 0

    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}.")
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

    env = {key: value for key, value in os.environ.items() if not key.startswith(("FORCE_TORCHRUN", "NPROC"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_DISABLED="true",
        OMP_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
    )
    env.pop("LLAMAFACTORY_WSPO_DISABLE", None)
    results: dict[str, dict[str, Any]] = {}
    for repeat, mode in [(repeat, mode) for repeat in range(args.repeats) for mode in modes]:
        # a fresh cache folder per run: a repeat must compute the pass again, not reuse the first run's cache
        runs = workdir / "runs" / f"repeat-{repeat}"
        config = {k: v for k, v in mode_config(mode, assets, runs, args).items() if v is not None}
        config_path = workdir / f"{mode}.config.json"
        result_path = workdir / f"{mode}.result-{repeat}.json"
        config_path.write_text(json.dumps(config, indent=2))
        print(f"running {mode} ({repeat + 1}/{args.repeats}) ...", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(config_path), str(result_path), "--device", args.device,
             "--threads", str(args.threads)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        (workdir / f"{mode}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"mode {mode} failed; log: {workdir / f'{mode}.log'}")
        peak = args.peak_tflops if args.device == "cuda" else None
        summary = summarise(mode, json.loads(result_path.read_text()), args.warmup, policy_params, peak)
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
