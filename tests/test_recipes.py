"""Every recipe under yaml_recipes/: parsed by LLaMA-Factory's own parser, then run in a tiny form on the CPU."""

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_train, train_logs


RECIPES = sorted((ROOT / "yaml_recipes").rglob("*.yaml"))
DATASET_INFO = json.loads((ROOT / "yaml_recipes" / "data" / "dataset_info.json").read_text())


def _load(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


def _id(recipe: Path) -> str:
    return str(recipe.relative_to(ROOT / "yaml_recipes"))


def test_recipes_exist():
    assert len(RECIPES) >= 18


@pytest.mark.parametrize("recipe", RECIPES, ids=_id)
def test_recipe_parses(recipe):
    from llamafactory.hparams.parser import _parse_train_args

    config = _load(recipe)
    config["bf16"] = False  # the only key that depends on the machine: this one has no GPU
    _, data_args, training_args, finetuning_args, _ = _parse_train_args(config)
    assert training_args.deepspeed == "yaml_recipes/deepspeed/ds_z3_config.json"
    assert (ROOT / training_args.deepspeed).is_file()
    assert set(data_args.dataset) <= set(DATASET_INFO), data_args.dataset
    assert finetuning_args.stage in ("sft", "dpo", "wspo", "wpo", "grpo")

    with pytest.raises(ValueError, match="learnig_rate"):  # a misspelt key fails
        _parse_train_args({**config, "learnig_rate": 1e-5})


def _tiny(recipe: Path, assets: Path, workdir: Path) -> dict:
    r"""The recipe with its models and data swapped for tiny local ones and one optimiser step."""
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
@pytest.mark.parametrize("recipe", RECIPES, ids=_id)
def test_recipe_runs_in_tiny_form(recipe, assets, tmp_path):
    config = _tiny(recipe, assets, tmp_path)
    run_train(config, tmp_path, nproc=2)  # every recipe uses ZeRO-3: two processes
    (log,) = train_logs(tmp_path / "out")
    assert math.isfinite(log["loss"])
    weights = "adapter_model.safetensors" if config["finetuning_type"] == "lora" else "model.safetensors"
    assert (tmp_path / "out" / weights).is_file()
