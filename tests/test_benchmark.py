"""scripts/benchmark.py in its short form: every mode runs and is measured, and so is the start-up hook (no
thresholds: timing is not a test); the packing preset's data."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.scripts import script_module
from helpers.train import ROOT, base_env


@pytest.mark.slow
def test_benchmark_quick(tmp_path: Path) -> None:
    output = tmp_path / "benchmark.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--quick", "--output", str(output)],
        env=base_env(OMP_NUM_THREADS="2"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(output.read_text())
    results = report["results"]
    assert list(results) == ["sft", "dpo", "wspo", "wspo_per_step", "wpo", "wpo_precomputed"]
    for mode, item in results.items():
        assert item["steps"] == report["setup"]["steps"], mode
        assert item["step_seconds"] > 0 and item["tokens_per_second"] > 0 and item["peak_memory_mb"] > 0, mode
    # the precompute pass runs exactly in the precomputing modes, and its bare forwards are part of it
    for mode in ("wspo", "wpo_precomputed"):
        assert 0 < results[mode]["bare_forward_seconds"] <= results[mode]["precompute_seconds"], mode
    for mode in ("sft", "dpo", "wspo_per_step", "wpo"):
        assert results[mode]["precompute_seconds"] == 0, mode
    # pairwise modes train on chosen + rejected: more tokens per step than the chosen-only modes
    tokens = {mode: item["tokens_per_second"] * item["step_seconds"] for mode, item in results.items()}
    assert tokens["dpo"] > tokens["sft"]
    assert {row["ratio"] for row in report["ratios"]} >= {"WSPO step / SFT step", "WPO step / DPO step"}
    assert all(row["value"] is not None for row in report["ratios"])
    assert "WSPO step / SFT step" in proc.stdout
    # the start-up cost of the .pth hook, timed here rather than in a test
    startup = report["startup"]
    assert startup["runs"] == 5
    assert 0 < startup["hook_import_ms"] < startup["interpreter_ms"]
    assert startup["interpreter_disabled_ms"] > 0
    assert "start-up hook: " in proc.stdout and "LLAMAFACTORY_WSPO_DISABLE=1" in proc.stdout


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_packing_preset_lengths_are_long_tailed_with_the_stated_mean(device: str) -> None:
    r"""The packing preset's data: prompt + response lengths average the preset's mean (500 tokens at cutoff 2048,
    scaled to 512 on the CPU), with UltraFeedback's long tail, every pair within cutoff_len; the shape checked on
    the logarithms of the drawn lengths, independently of how they are drawn."""
    benchmark = script_module("benchmark")
    preset = benchmark.PACKING_DEFAULTS[device]
    cutoff, mean = preset["seq_len"], preset["mean_tokens"]
    assert mean / cutoff == pytest.approx(500 / 2048, rel=0.01)

    lengths = benchmark.long_tailed_lengths(4000, mean, cutoff, seed=0)
    assert lengths == benchmark.long_tailed_lengths(4000, mean, cutoff, seed=0)
    assert lengths != benchmark.long_tailed_lengths(4000, mean, cutoff, seed=1)
    overhead = benchmark.QWEN_TURN_TOKENS
    totals = sorted(overhead + prompt + chosen for prompt, chosen, _ in lengths)
    assert statistics.mean(totals) == pytest.approx(mean, rel=0.03)
    assert max(overhead + prompt + max(chosen, rejected) for prompt, chosen, rejected in lengths) <= cutoff
    # long-tailed: the median well below the mean, the 99th percentile several times the median
    median, p99 = statistics.median(totals), totals[int(0.99 * len(totals))]
    assert median < 0.85 * mean and p99 > 3.5 * median
    # each part log-normal with the stated shape: the logarithms' spread is sigma (clipping and rounding aside)
    for part in zip(*lengths):
        logs = [math.log(count) for count in part]
        assert statistics.stdev(logs) == pytest.approx(benchmark.LENGTH_SIGMA, abs=0.06)
    stats = benchmark.length_stats(lengths)
    assert stats["mean"] == statistics.mean(totals) and stats["median"] == median and stats["max"] == totals[-1]


def test_cpu_packing_preset_keeps_the_gpu_presets_flop_mix() -> None:
    r"""The CPU packing preset is the GPU preset's model at a quarter of its width and of its row: a token's split of
    multiply-adds between attention and the dense layers is the same. Qwen2-1.5B's figures by hand: q and o
    1536 x 1536 each, k and v 1536 x 256 each (2 key-value heads of 128), the gated MLP 3 x 1536 x 8960; attention
    over a 2048-token row, q.k and the sum of v, 2 x 2048 x 1536."""
    benchmark = script_module("benchmark")
    gpu, cpu = benchmark.PACKING_DEFAULTS["cuda"], benchmark.PACKING_DEFAULTS["cpu"]
    full = benchmark.flop_mix(benchmark.PRESETS[gpu["preset"]]["strong"], gpu["seq_len"])
    assert full["dense"] == 2 * 1536 * 1536 + 2 * 1536 * 256 + 3 * 1536 * 8960 == 46_792_704
    assert full["attention"] == 2 * 2048 * 1536 == 6_291_456
    assert full["attention_share"] == pytest.approx(6_291_456 / (46_792_704 + 6_291_456))
    quarter = benchmark.flop_mix(benchmark.PRESETS[cpu["preset"]]["strong"], cpu["seq_len"])
    assert quarter["dense"] * 16 == full["dense"] and quarter["attention"] * 16 == full["attention"]
    # the former CPU preset ("small"): attention took more than twice the share it takes in the model it stands for
    small = benchmark.flop_mix(benchmark.PRESETS["small"]["strong"], cpu["seq_len"])
    assert small["attention_share"] > 2 * full["attention_share"]


def test_padding_bound_is_the_ratio_of_positions_per_real_token() -> None:
    benchmark = script_module("benchmark")
    results = {"packed": {"padding_share": 0.05}, "unpacked": {"padding_share": 0.40}, "zero3": {"rows": 3}}
    # 100 real tokens: 100 / 0.95 positions packed, 100 / 0.6 unpacked
    assert benchmark.padding_bound(results, "packed", "unpacked") == pytest.approx((100 / 0.6) / (100 / 0.95))
    assert benchmark.padding_bound(results, "packed", "zero3") is None
    assert benchmark.padding_bound(results, "packed", "missing") is None
