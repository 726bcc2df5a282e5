"""Errors that used to mislead or arrive late: each is one line naming the option and the fix, exit code 2, before any
model loads (``helpers.cli.one_line_error``). In this process where the command's ``main`` shows it; ``llamafactory-cli
train`` in a subprocess where its process exit (one line, code 2, on local rank 0 only) is the point."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.cli import one_line_error
from helpers.train import grpo_config, run_train, wpo_config, wspo_config

from llamafactory_wspo.cli import main as cli_main
from llamafactory_wspo.hparams import PluginInputError


def run_main(capsys, *args: object) -> subprocess.CompletedProcess:
    r"""``llamafactory-wspo ARGS`` in this process (its console script's ``main``), with its output."""
    code = cli_main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["llamafactory-wspo", *map(str, args)], code, out, err)


@pytest.fixture
def smoke_here(monkeypatch, capsys):
    r"""``llamafactory-wspo smoke ARGS`` in this process; the environment that smoke sets is put back afterwards."""
    import os

    environ = dict(os.environ)
    yield lambda *args: run_main(capsys, "smoke", *args)
    os.environ.clear()
    os.environ.update(environ)


# 1. An unknown stage: the known stages, and the close one (case-insensitively: LLaMA-Board displays `WSPO`).
@pytest.mark.parametrize(("stage", "meant"), [("WSPO", "wspo"), ("wsp0", "wspo"), ("Grpo", "grpo")])
def test_smoke_names_an_unknown_stage(assets, tmp_path, smoke_here, stage, meant) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(wspo_config(assets, tmp_path, stage=stage)))
    proc = smoke_here("--dry_run", recipe, f"--work_dir={tmp_path / 'work'}")
    one_line_error(
        proc,
        "llamafactory-wspo smoke: error: ",
        f"`stage: {stage}` is not a training stage: did you mean `stage: {meant}`?",
        "'sft', 'rm', 'ppo', 'dpo', 'kto' (LLaMA-Factory) and 'wspo', 'wpo', 'grpo' (llamafactory-wspo)",
    )
    assert "HfArgumentParser" not in proc.stderr
    assert not (tmp_path / "work").exists()  # before any swap


def test_train_names_an_unknown_stage(assets, tmp_path) -> None:
    r"""``llamafactory-cli train``: the parser guard refuses the stage before the host parses (it said "Unknown
    task" after parsing), one line from the plugin, exit code 2."""
    config = wspo_config(assets, tmp_path, stage="wsp0")
    proc = run_train(config, tmp_path, check=False)
    one_line_error(proc, "llamafactory-wspo: error: `stage: wsp0` is not a training stage", "`stage: wspo`?")
    assert "Unknown task" not in proc.stderr and not Path(config["output_dir"]).exists()


# 2. A local-looking path that does not exist is a missing path, never a hub id.
@pytest.mark.parametrize("value", ["./no/such", "saves/qwen2-grpo", "~/no-such-folder-xyz", "../no-such"])
def test_missing_local_path_is_never_a_hub_id(assets, tmp_path, monkeypatch, run_in_process, value) -> None:
    r"""``saves/qwen2-grpo`` (one slash) is a path where ``saves/`` exists here: the loader took it for a hub id
    ("has no tokenizer that can be loaded")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "saves").mkdir()
    config = wspo_config(assets, tmp_path, weak_aligned_model=value)
    run = run_in_process(config)
    assert isinstance(run.error, PluginInputError), run.error_text()
    assert str(run.error).startswith(f"`weak_aligned_model` is a path that does not exist: {value}. ")
    assert run.loaded_models == [] and "loading weights file" not in run.log


# 3. smoke's dataset_dir, 2. its swap of a missing local path, 7. what the real run needs: said, the trial runs.
def test_smoke_says_what_the_real_run_lacks(assets, tmp_path, monkeypatch, smoke_here) -> None:
    r"""A recipe beside its own ``data/`` run from another folder: smoke uses the recipe's folder and says that the
    real run reads the working directory's; a model path that does not exist is swapped with a word; the packages
    that the real run needs and this environment lacks (flash-attn here; deepspeed made unfindable as Python marks a
    blocked import) are warnings, and the dry run still parses: exit code 0."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "dataset_info.json").write_text((assets / "data" / "dataset_info.json").read_text())
    for file in (assets / "data").iterdir():
        if file.name != "dataset_info.json":
            (project / "data" / file.name).write_bytes(file.read_bytes())
    config = wspo_config(assets, tmp_path, dataset_dir="data", flash_attn="fa2", deepspeed="ds.json")
    config["weak_aligned_model"] = "./saves/weak-grpo"
    recipe = project / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**config, "template": "qwen"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    proc = smoke_here("--dry_run", recipe, f"--work_dir={tmp_path / 'work'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parsed by LLaMA-Factory's parser, the stage's checks hold: ok" in proc.stdout
    for package, key in (("deepspeed", "deepspeed: ds.json"), ("flash-attn", "flash_attn: fa2")):
        warning = f"warning: this recipe's real run needs {package} (`{key}`), which is not installed: pip install"
        assert f"{warning} {package}" in proc.stderr, proc.stderr
    assert f"dataset_dir data: not in the working directory {elsewhere}; used {project / 'data'}" in proc.stdout
    assert f"run it from {project}" in proc.stdout
    assert "weak_aligned_model: ./saves/weak-grpo -> tiny" in proc.stdout
    assert "a local path that does not exist: the real run needs the model there" in proc.stdout


def test_smoke_uses_the_working_directorys_dataset_dir_as_the_real_run(assets, tmp_path, monkeypatch):
    r"""Where the working directory has the recipe's ``dataset_dir``, that one (``llamafactory-cli train`` reads it),
    without a note; the recipe's folder otherwise."""
    from llamafactory_wspo.cli.smoke import data_folder

    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here / "data", there / "data"):
        folder.mkdir(parents=True)
        (folder / "dataset_info.json").write_text("{}")
    monkeypatch.chdir(here)
    assert data_folder({"dataset_dir": "data"}, there / "r.yaml") == (Path("data"), None)
    (here / "data" / "dataset_info.json").unlink()
    folder, note = data_folder({"dataset_dir": "data"}, there / "r.yaml")
    assert folder == there / "data" and note.startswith(f"dataset_dir data: not in the working directory {here}")


# 4. The hub, offline: one line naming the model and HF_HUB_OFFLINE.
def test_offline_hub_model_in_a_plugin_stage(assets, tmp_path, run_in_process) -> None:
    r"""A hub id that the cache lacks, offline (as the tests run): the stage's check names it before any load."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "the tests run offline (HF_HUB_OFFLINE=1)"
    config = wspo_config(assets, tmp_path, weak_base_model="someone/not-cached-model")
    run = run_in_process(config)
    assert isinstance(run.error, PluginInputError), run.error_text()
    message = str(run.error)
    assert message.startswith("`weak_base_model: someone/not-cached-model` is not in the local hub cache, and ")
    assert "HF_HUB_OFFLINE=1" in message and "huggingface-cli download someone/not-cached-model" in message
    assert run.loaded_models == []


@pytest.mark.parametrize("stage", ["wspo", "wpo", "grpo"])
def test_offline_hub_data_set_in_a_plugin_stage(assets, tmp_path, run_in_process, stage) -> None:
    r"""A hub data set that the cache lacks, offline: one error naming it (was ``datasets``' long traceback)."""
    import json
    import shutil

    data = shutil.copytree(assets / "data", tmp_path / "data")
    info = json.loads((data / "dataset_info.json").read_text())
    like = "tiny_pairs" if stage == "wpo" else "tiny_sft"
    info["hub_only"] = {**info[like], "hf_hub_url": "someone/not-cached-data"}
    info["hub_only"].pop("file_name")
    (data / "dataset_info.json").write_text(json.dumps(info))
    make = {"wspo": wspo_config, "wpo": wpo_config, "grpo": grpo_config}[stage]
    run = run_in_process(make(assets, tmp_path, dataset="hub_only", dataset_dir=str(data)))
    assert isinstance(run.error, PluginInputError), run.error_text()
    message = str(run.error)
    assert message.startswith("`dataset` someone/not-cached-data: not in the local hub cache, and HF_HUB_OFFLINE=1")
    assert "--repo-type dataset" in message


def test_offline_hub_model_in_a_command(tmp_path, capsys) -> None:
    r"""A ``llamafactory-wspo`` command that reaches the hub offline: one line (was a 36-line traceback)."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "the tests run offline (HF_HUB_OFFLINE=1)"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "hi"}\n')
    proc = run_main(
        capsys, "generate", "model_name_or_path=someone/not-cached-model", "template=qwen",
        f"input_file={prompts}", f"output_file={tmp_path / 'out.jsonl'}",
    )  # fmt: skip
    one_line_error(
        proc,
        "llamafactory-wspo generate: error: someone/not-cached-model: not in the local hub cache",
        "HF_HUB_OFFLINE=1",
    )


def test_offline_hub_data_set_in_a_command(tmp_path, capsys) -> None:
    r"""The same for a data set (``datasets`` names it in its own message; the offline error is not in the chain)."""
    from datasets import config

    assert config.HF_HUB_OFFLINE, "the tests run offline (HF_HUB_OFFLINE=1)"
    proc = run_main(capsys, "prepare-xsum", "dataset=someone/not-cached-data", f"output_dir={tmp_path / 'xsum'}")
    one_line_error(
        proc,
        "llamafactory-wspo prepare-xsum: error: someone/not-cached-data: not in the local hub cache",
        "HF_HUB_OFFLINE=1",
    )


# 5. No prefix matching of option names.
def test_an_abbreviated_option_is_refused(tmp_path, capsys) -> None:
    r"""``max_new_token=5`` was taken for ``max_new_tokens`` (argparse's prefix matching)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "hi"}\n')
    proc = run_main(
        capsys, "generate", "model_name_or_path=x", "template=qwen", f"input_file={prompts}",
        f"output_file={tmp_path / 'out.jsonl'}", "max_new_token=5",
    )  # fmt: skip
    one_line_error(proc, "unknown option(s) --max_new_token=5: did you mean max_new_tokens?")
    proc = run_main(capsys, "recipes", "list", "--work=x")
    one_line_error(proc, "unknown option(s) --work=x")
    assert not (tmp_path / "out.jsonl").exists()


# 6. A plugin error on a recipe in `llamafactory-cli train`: one line, exit code 2; the traceback when asked for.
def test_train_prints_a_plugin_error_as_one_line(assets, tmp_path) -> None:
    config = wspo_config(assets, tmp_path, pref_beta=-1)
    proc = run_train(config, tmp_path, check=False)
    one_line_error(proc, "llamafactory-wspo: error: `pref_beta` must be a positive number for `stage: wspo`")


@pytest.mark.slow
def test_train_shows_the_traceback_when_asked(assets, tmp_path) -> None:
    config = wspo_config(assets, tmp_path, pref_beta=-1)
    proc = run_train(config, tmp_path, check=False, LLAMAFACTORY_WSPO_TRACEBACK="1")
    assert proc.returncode == 2 and "Traceback" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("llamafactory_wspo.hparams.PluginInputError: `pref_beta`")


@pytest.mark.slow
def test_plugin_error_exit_on_every_rank_printed_on_local_rank_0() -> None:
    r"""The hook that ends a process on a PluginInputError: code 2 on every rank, the line from local rank 0 only (also
    under torch.distributed's own hook, which wraps it once a process group exists and holds back what it writes);
    any other exception keeps Python's traceback and code 1."""
    from helpers.train import base_env, free_port

    script = (
        "import llamafactory.hparams.parser, torch.distributed as dist\n"
        "from llamafactory_wspo.hparams import PluginInputError\n"
        "dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{port}', rank=0, world_size=1)\n"
        "raise {error}('`pref_beta` is wrong')\n"
    )
    runs = {}
    for name, error, rank in (("rank0", "PluginInputError", "0"), ("rank1", "PluginInputError", "1"),
                              ("host", "ValueError", "0")):  # fmt: skip
        runs[name] = subprocess.run(
            [sys.executable, "-c", script.format(error=error, port=free_port())],
            env=base_env(LOCAL_RANK=rank), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    one_line_error(runs["rank0"], "llamafactory-wspo: error: `pref_beta` is wrong")
    assert runs["rank1"].returncode == 2 and "pref_beta" not in runs["rank1"].stderr, runs["rank1"].stderr
    assert runs["host"].returncode == 1 and "Traceback" in runs["host"].stderr
