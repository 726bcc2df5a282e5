"""Shared fixtures: tiny local assets (built once per session) and LLaMA-Factory's ``run_exp`` in this process.

The helpers themselves live in ``tests/helpers/``; test modules import them from there. The hooks below print how
many of the selected tests are marked slow, and ``--require-slow`` (CI) stops a run that selected none of them.
"""

from pathlib import Path

import pytest
from helpers import tiny_assets
from helpers.in_process import InProcessRun, run_exp_in_process


SLOW_TESTS = pytest.StashKey[set[str]]()


def pytest_addoption(parser):
    parser.addoption(
        "--require-slow",
        action="store_true",
        help="exit with an error when no test marked slow is selected (CI: .ci/run runs scripts/test.sh with it)",
    )


def pytest_collection_finish(session):
    slow = {item.nodeid for item in session.items if item.get_closest_marker("slow") is not None}
    session.config.stash[SLOW_TESTS] = slow
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"tests marked slow: {len(slow)} of the {len(session.items)} selected")
    if not slow and session.config.getoption("require_slow"):
        pytest.exit("--require-slow: no test marked slow is selected", returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_terminal_summary(terminalreporter, config):
    slow = config.stash.get(SLOW_TESTS, set())
    if not slow or not any(terminalreporter.stats.get(key) for key in ("passed", "failed", "error", "skipped")):
        return

    outcomes = {  # one test can have several reports (setup, call, teardown): counted once per outcome
        outcome: len({report.nodeid for report in terminalreporter.stats.get(outcome, []) if report.nodeid in slow})
        for outcome in ("passed", "failed", "error", "skipped")
    }
    terminalreporter.write_line(
        f"tests marked slow: {len(slow)} selected, " + ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
    )


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
