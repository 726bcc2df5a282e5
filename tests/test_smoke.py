"""``llamafactory-wspo smoke``: every recipe of a plugin stage trains one optimiser step on the CPU with tiny models of
its template's family; the stock recipes swap and parse; a wrong key fails with the recipe's own error."""

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers.cli import run_cli
from helpers.train import ROOT

from llamafactory_wspo.extras.tiny_families import template_special_tokens


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
        assert "parsed by LLaMA-Factory's parser: ok" in text, text
        assert "synthetic rows" in text and "deepspeed: yaml_recipes/deepspeed/ds_z3_config.json -> (removed)" in text
    assert "Some keys are not used by the HfArgumentParser: ['learnig_rate']" in proc.stderr
    assert f"smoke: {len(STOCK_RECIPES)} of {len(STOCK_RECIPES) + 1} recipe(s) ok" in proc.stdout
