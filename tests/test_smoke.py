"""``llamafactory-wspo smoke``: every recipe of a plugin stage trains one optimiser step on the CPU with tiny models of
its template's family; the stock recipes swap and parse; a wrong key fails with the recipe's own error."""

import ast
import builtins
import inspect
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.cli import one_line_error, run_cli
from helpers.train import ROOT

from llamafactory_wspo.cli.smoke_families import template_special_tokens


PLUGIN_STAGES = ("wspo", "wpo", "grpo")
RECIPES = sorted((ROOT / "yaml_recipes").rglob("*.yaml"))
CONFIGS = {recipe: yaml.safe_load(recipe.read_text()) for recipe in RECIPES}
PLUGIN_RECIPES = [recipe for recipe in RECIPES if CONFIGS[recipe]["stage"] in PLUGIN_STAGES]
STOCK_RECIPES = [recipe for recipe in RECIPES if CONFIGS[recipe]["stage"] not in PLUGIN_STAGES]
FAMILY = {"qwen": ("Qwen2", "qwen2"), "llama3": ("Llama", "llama"), "zephyr": ("Mistral", "mistral"),
          "mistral": ("Mistral", "mistral")}  # fmt: skip
USER_RECIPE = {  # a user's recipe: another data format (sharegpt from a hub), LoRA, an evaluation set
    "model_name_or_path": "meta-llama/Llama-3.2-1B-Instruct",
    "stage": "wpo",
    "do_train": True,
    "finetuning_type": "lora",
    "lora_target": "all",
    "pref_beta": 0.1,
    "dataset": "chat_pairs",
    "eval_dataset": "chat_pairs",
    "dataset_dir": "data",
    "template": "llama3",
    "cutoff_len": 512,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "flash_attn": "fa2",
    "bf16": True,
    "output_dir": "saves/mine",
}
USER_DATA = {
    "chat_pairs": {
        "hf_hub_url": "someone/chat_pairs",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    }
}


def sections(stdout: str) -> dict[str, str]:
    r"""The output of each recipe: the text after its ``== smoke <recipe>`` line."""
    parts = re.split(r"^== smoke (\S+) .*$", stdout, flags=re.M)
    return {
        Path(name).name if name.endswith("mine.yaml") else name: text for name, text in zip(parts[1::2], parts[2::2])
    }


def recipe_name(recipe: Path) -> str:
    return str(recipe.relative_to(ROOT))


def test_every_recipe_is_covered() -> None:
    assert {CONFIGS[recipe]["stage"] for recipe in PLUGIN_RECIPES} == set(PLUGIN_STAGES)
    assert {CONFIGS[recipe]["stage"] for recipe in STOCK_RECIPES} == {"sft", "dpo"}
    assert any(CONFIGS[recipe].get("neat_packing") for recipe in PLUGIN_RECIPES)  # smoke trains a packed recipe


@pytest.mark.slow
def test_every_plugin_recipe_trains_one_step(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / "data").mkdir(parents=True)
    (user / "data" / "dataset_info.json").write_text(json.dumps(USER_DATA))
    (user / "mine.yaml").write_text(yaml.safe_dump(USER_RECIPE))
    work = tmp_path / "work"
    proc = run_cli(
        "smoke", *map(recipe_name, PLUGIN_RECIPES), user / "mine.yaml", f"--work_dir={work}", cwd=ROOT, timeout=1500
    )
    out = sections(proc.stdout)
    assert len(out) == len(PLUGIN_RECIPES) + 1
    for number, recipe in enumerate([*PLUGIN_RECIPES, user / "mine.yaml"], start=1):
        config = CONFIGS.get(recipe, USER_RECIPE)
        text = out[recipe.name if recipe.parent == user else recipe_name(recipe)]
        assert re.search(r"ok: 1 optimiser step, train_loss -?\d", text), text
        family, _ = FAMILY[config["template"]]
        assert f"model_name_or_path: {config['model_name_or_path']} -> tiny {family} model" in text
        weak_family, _ = FAMILY[config.get("weak_template", config["template"])]
        for key in ("weak_base_model", "weak_aligned_model"):
            if key in config:
                assert f"{key}: {config[key]} -> tiny {weak_family} model" in text
        assert "deepspeed" in text or "deepspeed" not in config
        state = json.loads(
            (work / "runs" / f"{number:02d}-{recipe.stem}" / "output" / "trainer_state.json").read_text()
        )
        assert state["global_step"] == 1
        if config.get("packing"):  # the synthetic examples fill one packed row: one step is the whole epoch
            assert state["epoch"] == 1.0, state  # unpacked: one example per row, 1 / 16 of the epoch

    user_text = out["mine.yaml"]
    assert "dataset chat_pairs: someone/chat_pairs ->" in user_text and "(sharegpt, pairwise)" in user_text
    assert "flash_attn: fa2 -> sdpa" in user_text and "bf16: True -> False" in user_text
    for template, (_, model_type) in FAMILY.items():
        folder = work / "models" / template
        if not folder.is_dir():
            continue
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        for token in template_special_tokens(template):  # one token each, as in the real tokenizer
            assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, (template, token)
        for model in folder.glob("lm-*"):
            assert AutoConfig.from_pretrained(model).model_type == model_type


@pytest.mark.slow
def test_stock_recipes_dry_run_and_a_wrong_key_fails_with_its_own_error(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({**CONFIGS[STOCK_RECIPES[0]], "learnig_rate": 1.0e-5}))
    shipped = [recipe_name(recipe).removeprefix("yaml_recipes/").removesuffix(".yaml") for recipe in STOCK_RECIPES]
    proc = run_cli("smoke", "--dry_run", *shipped, wrong, cwd=tmp_path, check=False)  # shipped names, elsewhere
    assert proc.returncode == 2, proc.stderr[-3000:]
    out = sections(proc.stdout)
    for recipe in STOCK_RECIPES:
        (text,) = [
            text for name, text in out.items() if name.endswith(recipe_name(recipe).removeprefix("yaml_recipes/"))
        ]
        assert "parsed by LLaMA-Factory's parser, the stage's checks hold: ok" in text, text
        assert "synthetic rows" in text and "deepspeed: yaml_recipes/deepspeed/ds_z3_config.json -> (removed)" in text
    assert "Some keys are not used by the HfArgumentParser: ['learnig_rate']" in proc.stderr
    assert f"smoke: {len(STOCK_RECIPES)} of {len(STOCK_RECIPES) + 1} recipe(s) ok" in proc.stdout


@pytest.fixture
def smoke_in_this_process(monkeypatch, capsys):
    r"""``llamafactory-wspo smoke ARGS`` in this process, as its console script runs it (``smoke.main``, whose return
    value is the exit code), with its output; the environment that it sets is put back afterwards."""
    from llamafactory_wspo.cli import smoke

    def run(*args: object) -> subprocess.CompletedProcess:
        code = smoke.main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["llamafactory-wspo", "smoke", *map(str, args)], code, out, err)

    environ = dict(os.environ)
    yield run
    os.environ.clear()
    os.environ.update(environ)


@pytest.mark.parametrize("case", ["recipe_not_utf8", "dataset_info_not_json", "no_template"])
def test_a_recipe_smoke_cannot_use_is_one_line(tmp_path: Path, smoke_in_this_process, monkeypatch, case: str) -> None:
    r"""What smoke needs of every recipe is checked before any run, each fault one line naming the file (exit code 2):
    a recipe that is not UTF-8, a ``dataset_info.json`` that is not JSON (with the position), and a recipe without
    ``template`` whose model smoke would have to replace (its real run would load the real model)."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"pairs": {"hf_hub_url": "someone/pairs", "ranking": True}}))
    config = {**USER_RECIPE, "dataset": "pairs", "eval_dataset": None}
    recipe = tmp_path / "recipe.yaml"
    if case == "recipe_not_utf8":
        text = yaml.safe_dump({**config, "output_dir": "saves/café"}, allow_unicode=True)
        recipe.write_bytes(text.encode("latin-1"))  # "é" as the single byte 0xe9
        offset = text.encode("latin-1").index(b"\xe9")
        needles = [f"recipe {recipe}: not UTF-8 text (byte 0xe9 at byte offset {offset})"]
    elif case == "dataset_info_not_json":
        (data / "dataset_info.json").write_text('{\n  "pairs": {"hf_hub_url": "someone/pairs",}\n}\n')
        recipe.write_text(yaml.safe_dump(config))
        needles = ["dataset_info data/dataset_info.json: not valid JSON", "at line 2, column 43"]
    else:
        recipe.write_text(yaml.safe_dump({key: value for key, value in config.items() if key != "template"}))
        needles = [f"recipe {recipe}: no `template`", "`model_name_or_path`", USER_RECIPE["model_name_or_path"]]
    proc = smoke_in_this_process("--dry_run", recipe, f"--work_dir={tmp_path / 'work'}")
    one_line_error(proc, "llamafactory-wspo smoke: error: ", *needles)
    assert not (tmp_path / "work").exists()  # before any swap


def test_dry_run_refuses_what_the_stage_refuses(assets, tmp_path: Path, smoke_in_this_process) -> None:
    r"""A dry run makes the stage's own checks (here: WPO on a data set without pairs), not only the parser's: it
    fails with the recipe's own error, as the real run would, and says no "ok"."""
    recipe = tmp_path / "recipe.yaml"
    config = {**USER_RECIPE, "dataset": "tiny_sft", "eval_dataset": None, "dataset_dir": str(assets / "data")}
    recipe.write_text(yaml.safe_dump(config))
    proc = smoke_in_this_process("--dry_run", recipe, f"--work_dir={tmp_path / 'work'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    needle = "FAILED (the recipe's own error): PluginInputError: `stage: wpo` needs pairwise data sets"
    assert needle in proc.stderr and "tiny_sft has no pairs" in proc.stderr, proc.stderr[-3000:]
    assert ": ok" not in proc.stdout and "smoke: 0 of 1 recipe(s) ok" in proc.stdout


def _calls(function) -> list[str]:
    tree = ast.parse(inspect.getsource(function).lstrip())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            names.append(node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", ""))
    return names


def _calls_before_loading(function) -> list[str]:
    r"""The functions that ``function`` calls, statement by statement, before its first ``load_tokenizer`` (Python's
    builtins, such as ``bool``, are no checks)."""
    body = ast.parse(inspect.getsource(function)).body[0].body
    names = []
    for statement in body:
        called = [n.func for n in ast.walk(statement) if isinstance(n, ast.Call)]
        called = [f.id if isinstance(f, ast.Name) else getattr(f, "attr", "") for f in called]
        if "load_tokenizer" in called:
            return names
        names += [name for name in called if not hasattr(builtins, name)]
    raise AssertionError(f"{function.__name__} loads no tokenizer")


def test_dry_run_makes_each_stages_checks():
    r"""Every check that a plugin stage makes before it loads its tokenizer is one that ``smoke``'s dry run makes."""
    from llamafactory_wspo.cli.smoke import preflight
    from llamafactory_wspo.train.grpo.workflow import run_grpo
    from llamafactory_wspo.train.wpo.workflow import run_wpo
    from llamafactory_wspo.train.wspo.workflow import run_wspo

    made = set(_calls(preflight))
    for run in (run_wspo, run_wpo, run_grpo):
        checks = _calls_before_loading(run)
        assert checks and set(checks) <= made, (run.__name__, set(checks) - made)
