"""The gate of ``llamafactory_wspo/host/`` (``checks.py``, ``gate.py``, ``patches.py``): checks of what the plugin relies on, not of a version string.

A host where one point moved is simulated by LLaMA-Factory as installed with one file edited (a package of links
to the installed files, put first on ``PYTHONPATH``): a plugin stage then stops with one clear error naming the
point and the tested releases, and stock stages are the host's own.
"""

import ast
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.train import run_train, wspo_config

from llamafactory_wspo import _autoload
from llamafactory_wspo.host import checks, gate, patches


def _host_with_edit(site: Path, relpath: str, old: str, new: str) -> None:
    r"""LLaMA-Factory as installed, but every ``old`` in the file ``relpath`` replaced by ``new``."""
    installed = Path(importlib.util.find_spec("llamafactory").submodule_search_locations[0])
    source, target = installed, site / "llamafactory"
    for part in Path(relpath).parts:  # links to everything except the folders down to the edited file
        target.mkdir(parents=True, exist_ok=True)
        for entry in source.iterdir():
            if entry.name not in (part, "__pycache__"):
                (target / entry.name).symlink_to(entry)
        source, target = source / part, target / part

    text = source.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {relpath}: update the simulated move"
    target.write_text(text.replace(old, new), encoding="utf-8")


# In a subprocess on the (edited) host: import the tuner (and LLaMA-Board), ask for `argv[1]` with run_exp (or only
# parse it), then parse the stock configuration `argv[2]`.
_PROBE = r"""
import json, sys, warnings

plugin, stock, mode = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import llamafactory.hparams.parser as parser
    import llamafactory.train.tuner as tuner
    if mode == "webui":
        from llamafactory.webui.interface import create_ui
        create_ui()

from llamafactory.extras.constants import TRAINING_STAGES
from llamafactory_wspo.host import gate

out = {
    "warnings": [str(w.message) for w in caught if "llamafactory-wspo" in str(w.message)],
    "training": gate.TRAINING.active,
    "llamaboard": gate.LLAMABOARD.active,
    "stages": list(TRAINING_STAGES),
}
try:
    if mode == "run_exp":
        tuner.run_exp(args=plugin)
    else:
        out["plugin_args"] = type(parser.get_train_args(plugin)[3]).__module__
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
out["stock_args"] = type(parser.get_train_args(stock)[3]).__module__
print("PROBE" + json.dumps(out))
"""


def _probe(assets: Path, workdir: Path, site: Path | None, mode: str) -> dict:
    plugin = wspo_config(assets, workdir / "plugin")
    stock = wspo_config(assets, workdir / "stock", stage="sft", weak_base_model=None, weak_aligned_model=None)
    stock.pop("logps_cache_dir")
    env = {"PYTHONPATH": str(site)} if site else {}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(plugin), json.dumps(stock), mode],
        cwd=workdir,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "PROBE" in proc.stdout, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("PROBE", 1)[1])
    assert not Path(plugin["output_dir"]).exists() and not Path(plugin["logps_cache_dir"]).exists()
    return out


def _env(**extra: str) -> dict[str, str]:
    from helpers.train import base_env

    return base_env(GRADIO_ANALYTICS_ENABLED="False", **extra)


def _tested_releases() -> str:
    return f"LLaMA-Factory {' and '.join(gate.TESTED_VERSIONS)}"


def test_startup_hook_targets_exactly_the_gated_modules():
    assert _autoload._TARGETS == {*gate.TRAINING.modules, *gate.LLAMABOARD.modules}


def test_every_tuner_name_the_plugin_uses_is_checked():
    r"""``_plugin_training_function`` reaches the host through ``tuner.<name>``: each name is in the tuner's check."""
    tree = ast.parse(inspect.getsource(patches._plugin_training_function))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tuner"
    }
    assert used - {"ray"} == set(checks.TUNER_NAMES)  # `ray` only where is_ray_available() said so


# The plugin's code that a training run does not import (command-line tools, LLaMA-Board), and the gate, which checks
# the host before it relies on it.
_NOT_STAGE_CODE = ("cli", "webui", "host/checks.py", "host/gate.py", "host/patches.py", "_autoload.py", "inference.py")


def test_every_host_name_the_stages_import_is_checked():
    r"""Each ``from llamafactory... import name`` of the stages' code is a point of the tuner's check."""
    package = Path(patches.__file__).parents[1]
    checked = {(module, qualname.split(".")[0]) for module, names in checks.STAGE_APIS.items() for qualname in names}
    checked |= {tuple(module.rsplit(".", 1)) for module in checks.STAGE_APIS}  # `from llamafactory.data import loader`
    imported = set()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] in _NOT_STAGE_CODE or relative.as_posix() in _NOT_STAGE_CODE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llamafactory."):
                imported |= {(node.module, alias.name) for alias in node.names}
    assert imported and not imported - checked, sorted(imported - checked)


@pytest.mark.host_compat
def test_every_check_holds_on_this_host():
    r"""On a tested host both areas are active: the training parser and tuner, and LLaMA-Board's modules."""
    import llamafactory.hparams.parser as parser
    import llamafactory.train.tuner  # noqa: F401
    import llamafactory.webui.interface  # noqa: F401

    for area in (gate.TRAINING, gate.LLAMABOARD):
        assert area.results == dict.fromkeys(area.modules), area.failures
        assert area.active
    assert parser._TRAIN_ARGS[3].__module__ == "llamafactory_wspo.host.patches"


@pytest.mark.slow
def test_another_version_string_with_the_same_points_is_supported(assets, tmp_path):
    r"""The version string is not checked: the installed points reporting 0.9.9 take the plugin stages."""
    site = tmp_path / "site"
    _host_with_edit(site, "extras/env.py", 'VERSION = "', 'VERSION = "0.9.9"  # was "')
    out = _probe(assets, tmp_path, site, mode="parse")
    assert out["training"] and out["warnings"] == []
    assert out["plugin_args"] == out["stock_args"] == "llamafactory_wspo.host.patches"


MOVES = {
    # A patched function renamed: the tuner's stage dispatch.
    "tuner": ("train/tuner.py", "_training_function", "_run_training", "llamafactory.train.tuner._training_function"),
    # The shape of the stage Literal: the host now has a stage of the plugin's name.
    "stage": (
        "hparams/finetuning_args.py",
        'stage: Literal["pt", "sft", "rm", "ppo", "dpo", "kto"]',
        'stage: Literal["pt", "sft", "rm", "ppo", "dpo", "kto", "grpo"]',
        "FinetuningArguments.stage already has grpo",
    ),
    # A host method that a plugin stage calls, renamed.
    "stage_api": (
        "train/dpo/trainer.py",
        "compute_reference_log_probs",
        "reference_log_probs",
        "llamafactory.train.dpo.trainer.CustomDPOTrainer.compute_reference_log_probs is missing",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("move", sorted(MOVES))
def test_moved_point_is_one_clear_error_and_stock_stages_are_the_hosts(assets, tmp_path, move):
    relpath, old, new, point = MOVES[move]
    site = tmp_path / "site"
    _host_with_edit(site, relpath, old, new)
    out = _probe(assets, tmp_path, site, mode="run_exp")
    assert not out["training"]
    assert out["error"].startswith("UnsupportedLlamaFactoryError: llamafactory-wspo cannot provide `stage: wspo`")
    assert point in out["error"] and _tested_releases() in out["error"]
    assert out["stock_args"] == "llamafactory.hparams.finetuning_args"  # the host's own arguments
    (warning,) = out["warnings"]  # one warning when the module with the moved point is imported
    assert point in warning


@pytest.mark.slow
def test_moved_parser_function_on_the_command_line(assets, tmp_path):
    r"""``_parse_train_args`` renamed: no guard in the parser, so the tuner's router gives the error; last lines."""
    site = tmp_path / "site"
    _host_with_edit(site, "hparams/parser.py", "_parse_train_args(", "_parse_training_args(")
    config = wspo_config(assets, tmp_path)
    proc = run_train(config, tmp_path, check=False, PYTHONPATH=str(site))
    text = proc.stdout + proc.stderr
    last_lines = "\n".join(text.strip().splitlines()[-3:])
    assert proc.returncode != 0
    assert "UnsupportedLlamaFactoryError: llamafactory-wspo cannot provide `stage: wspo`" in last_lines, last_lines
    assert "llamafactory.hparams.parser._parse_train_args is missing" in last_lines
    assert _tested_releases() in last_lines
    assert "loading weights file" not in text
    assert not Path(config["output_dir"]).exists() and not Path(config["logps_cache_dir"]).exists()


@pytest.mark.slow
def test_moved_llamaboard_element_leaves_the_stock_board_and_training(assets, tmp_path):
    r"""The RLHF accordion renamed: LLaMA-Board offers no plugin stage (one warning); the training area still works."""
    site = tmp_path / "site"
    _host_with_edit(site, "webui/components/train.py", "rlhf_tab", "preference_tab")
    out = _probe(assets, tmp_path, site, mode="webui")
    assert out["training"] and not out["llamaboard"]
    assert "WSPO" not in out["stages"] and "WPO" not in out["stages"] and "DPO" in out["stages"]
    (warning,) = out["warnings"]
    assert "llamafactory.webui.components.train.create_train_tab has no element rlhf_tab" in warning
    assert "LLaMA-Board offers no plugin stage" in warning
    assert out["stock_args"] == "llamafactory_wspo.host.patches"


def _raising_patch(monkeypatch, version: str) -> tuple[list[str], str]:
    r"""A module whose check holds and whose patch raises (not a ``HostMismatch``) on a host reporting ``version``:
    the warning and the error that asking for a plugin stage gives."""
    import types
    import warnings

    import llamafactory.extras.env

    monkeypatch.setattr(llamafactory.extras.env, "VERSION", version)
    area = gate.Area("training", ("llamafactory.fake",), effect="Asking for `stage: wspo` stops with an error")
    module = types.ModuleType("llamafactory.fake")

    def patch(module) -> None:
        raise KeyError("FinetuningArguments")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patches._check_and_patch(area, module, check=lambda module: None, patch=patch)
    assert not area.active
    with pytest.raises(gate.UnsupportedLlamaFactoryError) as raised:
        area.require("wspo", patches.on_import)
    return [str(warning.message) for warning in caught], str(raised.value)


def test_a_raising_patch_is_named_as_the_plugins_fault(monkeypatch):
    r"""On a tested release a patch that raises is a bug of the plugin: the error names the patch and its error and
    asks for a report; it does not blame the release."""
    tested = gate.TESTED_VERSIONS[0]
    (warning,), message = _raising_patch(monkeypatch, tested)
    what = "llamafactory-wspo's patch of llamafactory.fake raised KeyError: 'FinetuningArguments'"
    for text in (warning, message):
        assert what in text and "report it" in text, text
        assert "differs" not in text, text
    assert message.startswith("llamafactory-wspo cannot provide `stage: wspo`: " + what)
    assert f"on LLaMA-Factory {tested}, a tested release. This is a bug of llamafactory-wspo" in message
    assert "\n" not in message


def test_a_raising_patch_on_an_untested_release(monkeypatch):
    (warning,), message = _raising_patch(monkeypatch, "0.9.9")
    assert "raised KeyError: 'FinetuningArguments'" in message and "report it" in message
    assert f"on LLaMA-Factory 0.9.9, which is not a tested release ({_tested_releases()})" in message
    assert "0.9.9 is not a tested release" in warning


def test_a_moved_point_on_a_tested_release_is_not_another_release(monkeypatch):
    r"""A point that moved on a host reporting a tested version: a modified installation, not "another release"."""
    import llamafactory.extras.env

    monkeypatch.setattr(llamafactory.extras.env, "VERSION", gate.TESTED_VERSIONS[0])
    area = gate.Area("training", ("llamafactory.fake",), effect="...")
    area.record("llamafactory.fake", "llamafactory.fake.run is missing")
    message = area.message("`stage: wpo`")
    assert "is a tested release, but differs from it at a point the plugin relies on: llamafactory.fake.run" in message
    assert "differs from the tested releases" not in message and "report" not in message
    monkeypatch.setattr(llamafactory.extras.env, "VERSION", "0.9.9")
    assert "0.9.9 differs from the tested releases" in area.message("`stage: wpo`")
