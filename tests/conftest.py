"""Shared fixtures: tiny local assets (built once per session) and LLaMA-Factory's ``run_exp`` in this process.

The helpers themselves live in :mod:`helpers` (``tests/helpers/``); the names below are re-exported for the
test modules that still import them from here.
"""

from pathlib import Path

import pytest
from helpers.in_process import InProcessRun, run_exp_in_process
from helpers.train import (  # noqa: F401 (re-exported)
    BIN,
    DS_Z3_CONFIG,
    ROOT,
    base_env,
    free_port,
    grpo_config,
    log_history,
    run_train,
    train_logs,
    wpo_config,
    wspo_config,
)

from llamafactory_wspo.extras import tiny_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    r"""``tokenizer/``, ``weak/``, ``weak_aligned/``, ``strong/``, ``alt_vocab/`` and ``data/``."""
    out = tmp_path_factory.mktemp("assets")
    tiny_assets.build_all(out, seed=0)
    tiny_assets.build_model(out / "weak_aligned", out / "tokenizer", hidden_size=32, num_layers=1, seed=1)
    return out


@pytest.fixture
def run_in_process(monkeypatch):
    r"""``run_in_process(config)``: LLaMA-Factory's ``run_exp`` here; process state restored afterwards."""

    def run(config: dict) -> InProcessRun:
        return run_exp_in_process(config, monkeypatch)

    return run
