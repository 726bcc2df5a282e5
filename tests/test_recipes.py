"""Every recipe under yaml_recipes/ is parsed by LLaMA-Factory's own parser; one recipe of each distinct plugin
combination (stage x finetuning type x DeepSpeed config) also runs in a tiny form on the CPU.

Stock-stage recipes (``sft``, ``dpo``) only need to parse: running them is LLaMA-Factory's job.
"""

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers.cross import WEAK_TEMPLATE, build_cross_assets
from helpers.train import ROOT, run_train, train_logs


PLUGIN_STAGES = ("wspo", "wpo", "grpo")
RECIPES = sorted((ROOT / "yaml_recipes").rglob("*.yaml"))
DATASET_INFO = json.loads((ROOT / "yaml_recipes" / "data" / "dataset_info.json").read_text())


def _load(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


def _id(recipe: Path) -> str:
    return str(recipe.relative_to(ROOT / "yaml_recipes"))


def combination(config: dict) -> tuple[str, str, str | None, bool]:
    r"""What a tiny run of a recipe exercises: stage, finetuning type, DeepSpeed config, and whether its weak models
    have a tokenizer and template of their own (cross-tokenizer WSPO, ``weak_template``)."""
    return config["stage"], config.get("finetuning_type", "lora"), config.get("deepspeed"), "weak_template" in config


def one_per_combination(recipes: list[Path]) -> list[Path]:
    r"""The first recipe (in path order) of each distinct combination of a plugin stage."""
    chosen: dict[tuple, Path] = {}
    for recipe in recipes:
        config = _load(recipe)
        if config["stage"] in PLUGIN_STAGES:
            chosen.setdefault(combination(config), recipe)
    return list(chosen.values())


TINY_RUNS = one_per_combination(RECIPES)


def test_recipes_exist():
    assert len(RECIPES) >= 18
    stages = {_load(recipe)["stage"] for recipe in RECIPES}
    assert set(PLUGIN_STAGES) <= stages  # every plugin stage has a recipe


def test_one_tiny_run_per_plugin_combination():
    combinations = {combination(_load(recipe)) for recipe in RECIPES if _load(recipe)["stage"] in PLUGIN_STAGES}
    assert sorted(combination(_load(recipe)) for recipe in TINY_RUNS) == sorted(combinations)
    # the recipes of today: WSPO full, LoRA and cross-tokenizer, WPO and GRPO full, all ZeRO-3
    assert len(TINY_RUNS) >= 5


@pytest.mark.parametrize("recipe", RECIPES, ids=_id)
def test_recipe_parses(recipe):
    from llamafactory.hparams.parser import _parse_train_args

    config = _load(recipe)
    config["bf16"] = False  # the only key that depends on the machine: this one has no GPU
    _, data_args, training_args, finetuning_args, _ = _parse_train_args(config)
    assert training_args.deepspeed == "yaml_recipes/deepspeed/ds_z3_config.json"
    assert (ROOT / training_args.deepspeed).is_file()
    assert set(data_args.dataset) <= set(DATASET_INFO), data_args.dataset
    assert finetuning_args.stage in ("sft", "dpo", *PLUGIN_STAGES)


def test_misspelt_key_is_rejected():
    from llamafactory.hparams.parser import _parse_train_args

    recipe = next(recipe for recipe in RECIPES if _load(recipe)["stage"] == "wspo")  # the plugin's arguments
    config = {**_load(recipe), "bf16": False}
    _parse_train_args(config)  # the recipe as it is parses
    with pytest.raises(ValueError, match="learnig_rate"):
        _parse_train_args({**config, "learnig_rate": 1e-5})


@pytest.fixture(scope="module")
def cross_family(assets, tmp_path_factory) -> Path:
    r"""Weak models with a second tiny tokenizer kind (byte-level BPE), for the cross-tokenizer recipes."""
    return build_cross_assets(assets, tmp_path_factory.mktemp("cross"))


def _tiny(recipe: Path, assets: Path, workdir: Path, cross_family: Path | None = None) -> dict:
    r"""The recipe with its models and data swapped for tiny local ones and one optimiser step; the weak roles of a
    cross-tokenizer recipe (``weak_template``) get ``cross_family``'s models, which the recipe's template renders."""
    config = _load(recipe)
    roles = {
        "model_name_or_path": "weak" if recipe.stem.startswith("weak") else "strong",
        "weak_base_model": "weak",
        "weak_aligned_model": "weak_aligned",
        "ref_model": "strong",
    }
    for key, role in roles.items():
        if key in config:
            config[key] = str(assets / role)

    if "weak_template" in config:
        assert config["weak_template"] == WEAK_TEMPLATE  # the family carries that template's special tokens
        for key in ("weak_base_model", "weak_aligned_model"):
            config[key] = str(cross_family / roles[key])

    ranking = {DATASET_INFO[name].get("ranking", False) for name in config["dataset"].split(",")}
    config.update(
        dataset="tiny_pairs" if ranking == {True} else "tiny_sft",
        dataset_dir=str(assets / "data"),
        template="qwen",
        cutoff_len=96,
        max_samples=64,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        output_dir=str(workdir / "out"),
        logps_cache_dir=str(workdir / "cache"),
        deepspeed=str(ROOT / config["deepspeed"]),
    )
    config.pop("preprocessing_num_workers", None)
    config.pop("num_train_epochs", None)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("recipe", TINY_RUNS, ids=_id)
def test_recipe_runs_in_tiny_form(recipe, assets, tmp_path, cross_family):
    config = _tiny(recipe, assets, tmp_path, cross_family)
    proc = run_train(config, tmp_path, nproc=2)  # every recipe uses ZeRO-3: two processes
    (log,) = train_logs(tmp_path / "out")
    assert math.isfinite(log["loss"])
    if "weak_template" in config:
        assert "Cross-tokenizer WSPO: strong tokenizer" in proc.stdout + proc.stderr
        assert log["wspo/projection_unmatched"] == 0.0
    weights = "adapter_model.safetensors" if config["finetuning_type"] == "lora" else "model.safetensors"
    assert (tmp_path / "out" / weights).is_file()
