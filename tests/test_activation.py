"""Activation through the ``.pth`` hook: light, total, switchable, and harmless when it fails."""

import re
import subprocess
import sys

import pytest
from helpers.train import BIN, base_env, log_history, run_train, wspo_config


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=base_env(**env), capture_output=True, text=True, timeout=120
    )


@pytest.mark.host_compat
def test_startup_imports_nothing_heavy():
    r"""The start-up hook imports only the standard library and its own package; it patches nothing yet."""
    code = (
        "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'llamafactory', "
        "'transformers', 'llamafactory_wspo'))); print([type(f).__name__ for f in sys.meta_path])"
    )
    proc = _python(code)
    modules, finders = proc.stdout.splitlines()
    assert modules == "['llamafactory_wspo', 'llamafactory_wspo._autoload']"
    assert "_PostImportFinder" in finders

    # Every import made while the .pth line imports the hook: the lines nested above the hook's own line.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], env=base_env(), capture_output=True, text=True, timeout=120
    )
    lines = [re.match(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)\s*$", line) for line in proc.stderr.splitlines()]
    entries = [(len(match.group(1)), match.group(2)) for match in lines if match]
    (position,) = [i for i, (_, name) in enumerate(entries) if name == "llamafactory_wspo._autoload"]
    depth = entries[position][0]
    nested = []
    for indent, name in reversed(entries[:position]):
        if indent <= depth:
            break
        nested.append(name)
    assert "llamafactory_wspo" in nested  # the package itself is imported on the way
    foreign = [name for name in nested if name.split(".")[0] not in (*sys.stdlib_module_names, "llamafactory_wspo")]
    assert not foreign, foreign


@pytest.mark.host_compat
def test_disable_switch_turns_everything_off():
    import llamafactory.hparams.parser
    import llamafactory.train.tuner  # noqa: F401 (what `llamafactory-cli train` imports)

    # on: this pytest process, started like any other Python process of the environment
    assert llamafactory.hparams.parser._TRAIN_ARGS[3].__module__ == "llamafactory_wspo.host.patches"
    assert "_PostImportFinder" in [type(finder).__name__ for finder in sys.meta_path]
    code = "import sys; import llamafactory.hparams.parser as p; print(p._TRAIN_ARGS[3].__module__, sys.meta_path)"
    off = _python(code, LLAMAFACTORY_WSPO_DISABLE="1")
    assert off.stdout.startswith("llamafactory.hparams.finetuning_args"), off.stderr[-2000:]
    assert "_PostImportFinder" not in off.stdout


@pytest.mark.host_compat
def test_a_failing_patch_is_one_warning_not_a_crash(tmp_path):
    fake = tmp_path / "llamafactory"
    (fake / "extras").mkdir(parents=True)
    (fake / "hparams").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "extras" / "__init__.py").write_text("")
    (fake / "extras" / "env.py").write_text('VERSION = "0.9.5"\n')
    (fake / "hparams" / "__init__.py").write_text("")
    (fake / "hparams" / "parser.py").write_text("READY = True  # no FinetuningArguments: the patch cannot apply\n")
    proc = _python(
        "import warnings; warnings.simplefilter('always')\nimport llamafactory.hparams.parser as p; print(p.READY)",
        PYTHONPATH=str(tmp_path),
        PYTHONWARNINGS="default",
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "True"
    assert proc.stderr.count("llamafactory-wspo is inactive") == 1


@pytest.mark.host_compat
def test_a_missing_patches_module_is_one_warning(tmp_path):
    r"""A half-removed install (the hook's package without ``host.patches``): one warning per process, not one per
    patched module that LLaMA-Factory imports."""
    fake = tmp_path / "llamafactory"
    for folder in ("hparams", "train"):
        (fake / folder).mkdir(parents=True)
        (fake / folder / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "hparams" / "parser.py").write_text("READY = True\n")
    (fake / "train" / "tuner.py").write_text("READY = True\n")
    proc = _python(
        "import sys, warnings; warnings.simplefilter('always')\n"
        "sys.modules['llamafactory_wspo.host.patches'] = None  # the module is gone: importing it fails\n"
        "import llamafactory.hparams.parser as p, llamafactory.train.tuner as t; print(p.READY and t.READY)",
        PYTHONPATH=str(tmp_path),
        PYTHONWARNINGS="default",
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]
    assert proc.stderr.count("llamafactory-wspo is inactive") == 1, proc.stderr
    assert "llamafactory_wspo.host.patches" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_command_line_flags_and_choices(assets, tmp_path):
    r"""A run from ``--key=value`` flags only, with one of WPO's own losses among them (each one parses as a flag:
    ``tests/test_bad_input.py``); a stage that does not exist lists the host's and the plugin's."""
    config = wspo_config(assets, tmp_path, max_steps=1, max_samples=8, pref_loss="robust")
    flags = [f"--{key}={value}" for key, value in config.items()]
    proc = subprocess.run(
        [str(BIN / "llamafactory-cli"), "train", *flags], env=base_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([entry for entry in log_history(tmp_path / "out") if "loss" in entry]) == 1

    bogus = subprocess.run(
        [str(BIN / "llamafactory-cli"), "train", "--stage", "bogus", "--model_name_or_path", "x"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bogus.returncode != 0 and "'wspo'" in bogus.stderr and "'dpo'" in bogus.stderr


@pytest.mark.host_compat
def test_help_documents_the_plugin_arguments():
    proc = subprocess.run(
        [str(BIN / "llamafactory-cli"), "train", "-h"], env=base_env(), capture_output=True, text=True, timeout=600
    )
    text = " ".join(proc.stdout.split())
    for key in (
        "--weak_base_model",
        "--weak_aligned_model",
        "--wspo_response",
        "--precompute_logps",
        "--logps_cache_dir",
    ):
        assert key in text
    assert "weak model before its alignment" in text


STOCK = {
    "sft": {"stage": "sft", "dataset": "tiny_sft"},
    "dpo": {"stage": "dpo", "dataset": "tiny_pairs", "pref_beta": 0.1},
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [pytest.param("dpo", marks=pytest.mark.host_compat), "sft"])
def test_stock_stages_unchanged(assets, tmp_path, stage):
    losses = {}
    for label, env in (("on", {}), ("off", {"LLAMAFACTORY_WSPO_DISABLE": "1"})):
        config = wspo_config(assets, tmp_path / label, max_samples=16, **STOCK[stage])
        for key in ("weak_base_model", "weak_aligned_model", "logps_cache_dir"):
            config.pop(key)
        run_train(config, tmp_path / label, **env)
        losses[label] = [entry["loss"] for entry in log_history(tmp_path / label / "out") if "loss" in entry]

    assert len(losses["on"]) == 3 and losses["on"] == losses["off"]


@pytest.mark.slow
def test_wheel_installs_the_startup_hook(tmp_path):
    r"""A normal (non-editable) install puts the `.pth` hook at the root of site-packages, beside the package."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("llamafactory_wspo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        hook = archive.read("llamafactory_wspo.pth").decode()
        assert hook == (root / "llamafactory_wspo.pth").read_text()  # the repository's hook line, as it is
        assert hook.startswith("import ") and "import llamafactory_wspo._autoload" in hook  # site runs such lines

    assert {"llamafactory_wspo/_autoload.py", "llamafactory_wspo/host/patches.py"} <= names

    # Installed into a fresh site directory, the hook runs when Python processes that directory.
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    code = f"import site, sys; site.addsitedir({str(target)!r}); print([type(f).__name__ for f in sys.meta_path])"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert "_PostImportFinder" in out.stdout, out.stderr
