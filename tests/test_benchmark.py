"""scripts/benchmark.py in its short form: every mode runs and is measured, and so is the start-up hook (no
thresholds: timing is not a test)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
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
