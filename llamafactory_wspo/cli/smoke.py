r"""``llamafactory-wspo smoke``: any recipe, one optimiser step, on the CPU, offline, with tiny stand-ins."""

import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .args import CliError, option, parse_args, run_command


PROG = "llamafactory-wspo smoke"
DESCRIPTION = r"""Run recipes for one optimiser step on the CPU, offline, with tiny stand-ins for what a CPU cannot hold.

  llamafactory-wspo smoke yaml_recipes/xsum/strong_wspo.yaml
  llamafactory-wspo smoke my_recipe.yaml pref_beta=0.2          # key=value: overrides of the recipe
  llamafactory-wspo smoke xsum/weak_grpo.yaml --dry_run         # a shipped recipe; swap and parse only

Every key of the recipe is kept except:
- models (model_name_or_path, ref_model, weak_base_model, weak_aligned_model, reward_model, adapters, reward-model
  paths in grpo_reward_funcs) -> tiny random models of the family that `template` implies (qwen -> Qwen2, llama3 ->
  Llama, mistral/zephyr -> Mistral, ...; `weak_template` for the weak models), with a tokenizer carrying that
  template's special tokens, built on the spot;
- data sets from a hub (or local files that do not exist yet) -> a few rows in the same format (alpaca or sharegpt,
  pairwise or not, the same columns and tags); existing local files are kept (max_samples rows);
- deepspeed, bf16/fp16, flash attention (fa2 -> sdpa), liger kernel and unsloth -> off; max_steps -> 1;
  output_dir, logps_cache_dir and dataset_dir -> the work folder; report_to -> none; preprocessing workers -> none.
Each swap is printed (a local model path that does not exist is named as such). A relative dataset_dir is read from
the working directory, as `llamafactory-cli train` reads it, else from the recipe's folder or one above it (said).
What the recipe's real run needs and this environment lacks (deepspeed, flash-attn for fa2, liger-kernel, unsloth,
vllm) is a warning; the CPU trial still runs. A recipe that names a model to swap needs `template`. A wrong key, or
an argument that the stage refuses before it loads a model, fails with the recipe's own error (LLaMA-Factory's
parser and the stage's own checks, also in a dry run; exit code 2); a failed run exits with code 1. Several recipes
run one after the other in this process.
"""
MODEL_KEYS = ("model_name_or_path", "ref_model", "reward_model", "weak_base_model", "weak_aligned_model")
WEAK_KEYS = ("weak_base_model", "weak_aligned_model")
ADAPTER_KEYS = {"adapter_name_or_path": "model_name_or_path", "ref_model_adapters": "ref_model",
                "reward_model_adapters": "reward_model"}  # fmt: skip
OFF_KEYS = {"bf16": False, "fp16": False, "pure_bf16": False, "enable_liger_kernel": False, "use_unsloth": False,
            "use_unsloth_gc": False, "push_to_hub": False}  # fmt: skip
REMOVED_KEYS = ("deepspeed", "preprocessing_num_workers", "tokenized_path", "resume_from_checkpoint", "model_revision")
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
WORDS = (
    "the a of to in and is was for on that with as by it at from this news city report people year government "
    "said new first last two three police school team game water house world small large good short long list "
    "some animals colors fruits cat dog red blue apple pear hammer saw answer question write tell give name"
).split()


@dataclass
class SmokeArguments:
    recipes: list[str] = option(help="Recipe YAML files (paths, or paths inside the shipped yaml_recipes/).")
    dry_run: bool = option(False, help="Swap, parse with LLaMA-Factory's parser and make the checks that the run "
                           "makes before it loads a model; do not train.")  # fmt: skip
    work_dir: str | None = option(None, help="Folder for the tiny models, data and outputs (default: a temporary "
                                  "folder, removed at the end).")  # fmt: skip
    num_rows: int | None = option(None, help="Rows per swapped data set (default: two optimiser steps' worth, >= 16).")
    verbose: bool = option(False, help="Show LLaMA-Factory's INFO logs of the runs.")

    def check(self) -> None:
        if self.num_rows is not None and self.num_rows < 1:
            raise CliError(f"--num_rows must be >= 1, got {self.num_rows}")


@dataclass
class Swap:
    r"""A recipe made fit for one CPU step, and what was changed (printed)."""

    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def note(self, key: str, old: Any, new: Any) -> None:
        self.notes.append(f"{key}: {'(unset)' if old is None else old} -> {'(removed)' if new is None else new}")


def find_recipe(name: str) -> Path:
    r"""A recipe file: a path, or a path inside the shipped ``yaml_recipes/`` (with or without that prefix)."""
    path = Path(name)
    if path.is_file():
        return path
    from .recipes import recipes_root

    root = recipes_root()
    relative = Path(*path.parts[1:]) if path.parts and path.parts[0] == "yaml_recipes" else path
    for candidate in (root / relative, (root / relative).with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise CliError(f"recipe {name}: no such file (nor a shipped recipe: `llamafactory-wspo recipes list`)")


def read_text(path: Path, what: str) -> str:
    r"""The text of ``path``; one :class:`CliError` naming ``what`` and the file if it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CliError(
            f"{what} {path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at byte offset {err.start}): save it "
            "as UTF-8"
        ) from None


def load_recipe(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(read_text(path, "recipe")) or {}
    except yaml.YAMLError as err:
        raise CliError(f"recipe {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict):
        raise CliError(f"recipe {path}: expected a mapping of LLaMA-Factory arguments")
    return {**config, **overrides}


def check_recipe(config: dict[str, Any], recipe: Path) -> None:
    r"""What smoke itself needs of a recipe, for every recipe before any run (one :class:`CliError`): a ``template``
    where a model must be swapped (the tiny model's family comes from it), and a readable ``dataset_info.json``."""
    local = [key for key in MODEL_KEYS if isinstance(config.get(key), str) and os.path.exists(config[key])]
    swapped = [key for key in MODEL_KEYS if config.get(key) and key not in local]
    if swapped and not config.get("template"):
        raise CliError(
            f"recipe {recipe}: no `template`: smoke replaces {', '.join(f'`{key}`' for key in swapped)} with a tiny "
            "model of the template's family, and the run would otherwise load the real model; add the chat template "
            f"of {config[swapped[0]]} to the recipe (e.g. `template: qwen`), or give it after the recipe "
            "(`template=qwen`)"
        )
    stage = config.get("stage")
    if stage is not None:
        from ..hparams import PluginInputError, check_stage

        try:
            check_stage(stage, host_stages())
        except PluginInputError as err:
            raise CliError(f"recipe {recipe}: {err}") from None
    dataset_info(config, recipe)


def host_stages() -> tuple[str, ...]:
    r"""The stages of the installed LLaMA-Factory (its ``FinetuningArguments.stage`` choices)."""
    from llamafactory.hparams.finetuning_args import FinetuningArguments

    from ..host.checks import literal_choices

    return literal_choices(FinetuningArguments, "stage")


# What a recipe's real run imports (its key, the value that needs it, the module, what installs it).
RUNTIME_NEEDS = (
    ("deepspeed", None, "deepspeed", "deepspeed"),
    ("flash_attn", "fa2", "flash_attn", "flash-attn"),
    ("enable_liger_kernel", None, "liger_kernel", "liger-kernel"),
    ("use_unsloth", None, "unsloth", "unsloth"),
    ("infer_backend", "vllm", "vllm", "vllm"),
)


def missing_runtime(config: dict[str, Any]) -> list[str]:
    r"""One warning per package that the unswapped recipe's real run needs and this environment lacks (smoke itself
    turns them off, so the CPU trial still runs)."""
    import importlib.util

    warnings = []
    for key, value, module, package in RUNTIME_NEEDS:
        wanted = config.get(key)
        if not wanted or value is not None and str(wanted).lower() != value:
            continue
        if importlib.util.find_spec(module) is None:
            warnings.append(
                f"warning: this recipe's real run needs {package} (`{key}: {wanted}`), which is not installed: "
                f"pip install {package}"
            )
    return warnings


def dataset_info(config: dict[str, Any], recipe: Path) -> tuple[Path, dict[str, Any]] | None:
    r"""``(dataset_dir, its dataset_info.json)`` of a recipe that names data sets, if the file exists (one
    :class:`CliError` naming the file if it is not UTF-8 JSON holding a mapping); ``None`` otherwise."""
    if not any(config.get(key) for key in ("dataset", "eval_dataset")):
        return None
    source_dir = data_folder(config, recipe)[0]
    if source_dir is None:
        return None
    path = source_dir / "dataset_info.json"
    try:
        info = json.loads(read_text(path, "dataset_info"))
    except json.JSONDecodeError as err:
        raise CliError(
            f"dataset_info {path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): fix the file"
        ) from None
    if not isinstance(info, dict):
        raise CliError(f"dataset_info {path}: expected a mapping of data set names to their entries")
    return source_dir, info


def data_folder(config: dict[str, Any], recipe: Path) -> tuple[Path | None, str | None]:
    r"""``(the folder holding the recipe's dataset_info.json, a note where it is not the real run's)``.

    ``llamafactory-cli train`` reads a relative ``dataset_dir`` from the working directory, so smoke does too where
    it has a ``dataset_info.json``; otherwise it looks in the recipe's folder and the folders above it (the shipped
    recipes name ``yaml_recipes/data``, relative to the folder above ``yaml_recipes/``) and says which folder it used.
    """
    value = str(config.get("dataset_dir", "data"))
    path = Path(value).expanduser()
    if path.is_absolute() or (path / "dataset_info.json").is_file():
        return (path if (path / "dataset_info.json").is_file() else None), None
    for parent in recipe.resolve().parents:
        if (parent / path / "dataset_info.json").is_file():
            return parent / path, (
                f"dataset_dir {value}: not in the working directory {Path.cwd()}; used {parent / path} (found from the "
                f"recipe's folder): `llamafactory-cli train` reads it from the working directory, so run it from "
                f"{parent}"
            )
    return None, None


class TinyModels:
    r"""Tiny stand-ins, built once per (template, original name) in ``root``."""

    def __init__(self, root: Path) -> None:
        from transformers.utils import logging as hf_logging

        self.root = root
        hf_logging.disable_progress_bar()  # "Writing model shards" of every tiny model

    def _tokenizer(self, template: str) -> Path:
        from . import smoke_families as tiny_families

        path = self.root / template / "tokenizer"
        if not path.is_dir():
            tiny_families.build_tokenizer(path, template)
        return path

    def _slot(self, template: str, kind: str, name: str) -> Path:
        slug = "".join(char if char.isalnum() or char in "-_." else "_" for char in name).strip("_.")[:80]
        return self.root / template / f"{kind}-{slug or 'model'}"

    def causal_lm(self, template: str, name: str) -> Path:
        from . import smoke_families as tiny_families

        path = self._slot(template, "lm", name)
        if not path.is_dir():
            tiny_families.build_model(path, self._tokenizer(template), template, tiny_families.model_seed(name))
        return path

    def reward_model(self, template: str, name: str) -> Path:
        from . import smoke_families as tiny_families

        path = self._slot(template, "rm", name)
        if not path.is_dir():
            tiny_families.build_reward_model(path, self._tokenizer(template), template, tiny_families.model_seed(name))
        return path

    def adapter(self, model_dir: Path, name: str) -> Path:
        from . import smoke_families as tiny_families

        path = model_dir.parent / f"{model_dir.name}-lora-{tiny_families.model_seed(name)}"
        if not path.is_dir():
            tiny_families.build_lora_adapter(path, model_dir, tiny_families.model_seed(name))
        return path


def swap_models(swap: Swap, models: TinyModels) -> None:
    from ..train.trainer_utils import looks_like_local_path
    from .smoke_families import family_of

    config = swap.config
    template = config.get("template")
    if not template:
        return  # LLaMA-Factory's parser names the missing template
    from llamafactory.data.template import TEMPLATES

    tiny: dict[str, Path] = {}
    for key in MODEL_KEYS:
        name = config.get(key)
        if not name or not isinstance(name, str):
            continue
        key_template = config.get("weak_template") or template if key in WEAK_KEYS else template
        if key_template not in TEMPLATES:
            continue  # the recipe's own error follows
        family, known = family_of(key_template)
        if key == "reward_model":
            tiny[key] = models.reward_model(key_template, name)
            kind = "reward model"
        else:
            tiny[key] = models.causal_lm(key_template, name)
            kind = "model"
        config[key] = str(tiny[key])
        guess = "" if known else f"; no family known for template {key_template}, Llama used"
        missing = ""
        if looks_like_local_path(name) and not os.path.isdir(os.path.expanduser(name)):
            missing = "; a local path that does not exist: the real run needs the model there"
        swap.notes.append(f"{key}: {name} -> tiny {family.name} {kind} (template {key_template}{guess}{missing})")

    for key, base_key in ADAPTER_KEYS.items():
        names = config.get(key)
        if not names or base_key not in tiny:
            continue
        adapters = [str(models.adapter(tiny[base_key], name.strip())) for name in str(names).split(",")]
        config[key] = ",".join(adapters)
        swap.notes.append(f"{key}: {names} -> {len(adapters)} tiny LoRA adapter(s)")

    rewards = config.get("grpo_reward_funcs")
    if isinstance(rewards, str):
        names = [name.strip() for name in rewards.split(",") if name.strip()]
        swapped = [
            str(models.reward_model(template, name))
            if name != "length" and ":" not in name and ("/" in name or os.path.isdir(os.path.expanduser(name)))
            else name
            for name in names
        ]
        if swapped != names:
            config["grpo_reward_funcs"] = ",".join(swapped)
            swap.notes.append(
                f"grpo_reward_funcs: reward model paths -> tiny {family_of(template)[0].name} reward models"
            )


def synthetic_rows(entry: dict[str, Any], count: int, seed: str) -> list[dict[str, Any]]:
    r"""``count`` rows in the format that ``entry`` (a dataset_info.json entry) describes."""
    rng = random.Random(seed)
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}

    def text(low: int, high: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))

    rows = []
    for index in range(count):
        prompt, chosen, rejected = text(4, 12), text(2, 10), text(8, 20)
        row: dict[str, Any] = {}
        if entry.get("formatting", "alpaca") == "sharegpt":
            role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
            user, assistant = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
            messages = [{role: user, content: prompt}]
            if entry.get("ranking"):
                row[columns.get("chosen", "chosen")] = {role: assistant, content: chosen}
                row[columns.get("rejected", "rejected")] = {role: assistant, content: rejected}
            else:
                messages.append({role: assistant, content: chosen})
            row[columns.get("messages", "conversations")] = messages
        else:
            row[columns.get("prompt", "instruction")] = prompt
            if columns.get("query", "input"):
                row[columns.get("query", "input")] = text(10, 30) if index % 2 else ""
            if entry.get("ranking"):
                row[columns.get("chosen", "chosen")] = chosen
                row[columns.get("rejected", "rejected")] = rejected
            else:
                row[columns.get("response", "output")] = chosen
            if columns.get("history"):
                row[columns["history"]] = []
        if columns.get("kto_tag"):
            row[columns["kto_tag"]] = index % 2 == 0
        if columns.get("system"):
            row[columns["system"]] = "you are a helpful assistant"
        rows.append(row)
    return rows


def rows_needed(config: dict[str, Any], num_rows: int | None) -> int:
    if num_rows is not None:
        return num_rows
    batch = int(config.get("per_device_train_batch_size", 8)) * int(config.get("gradient_accumulation_steps", 1))
    return max(16, 2 * batch)


def swap_data(swap: Swap, recipe: Path, data_dir: Path, num_rows: int) -> None:
    config = swap.config
    names = [
        name.strip()
        for key in ("dataset", "eval_dataset")
        for name in str(config.get(key) or "").split(",")
        if name.strip()
    ]
    if not names:
        return
    found = dataset_info(config, recipe)
    if found is None:
        swap.notes.append(f"dataset_dir {config.get('dataset_dir', 'data')}: no dataset_info.json found; data kept")
        return
    source_dir, info = found
    where = data_folder(config, recipe)[1]
    if where:
        swap.notes.append(where)
    new_info: dict[str, Any] = {}
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in dict.fromkeys(names):
        entry = info.get(name)
        if not isinstance(entry, dict):
            continue  # LLaMA-Factory's loader names the undefined data set
        local = entry.get("file_name") and not any(entry.get(key) for key in HUB_KEYS)
        if local and (source_dir / entry["file_name"]).exists():
            new_info[name] = {**entry, "file_name": str((source_dir / entry["file_name"]).resolve())}
            continue
        kept = {key: value for key, value in entry.items() if key not in (*HUB_KEYS, "split", "subset", "folder",
                                                                          "num_samples", "file_name")}  # fmt: skip
        file_name = f"{name}.json"
        rows = synthetic_rows(entry, num_rows, name)
        (data_dir / file_name).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        new_info[name] = {**kept, "file_name": file_name}
        where = next((entry[key] for key in HUB_KEYS if entry.get(key)), None) or f"{entry.get('file_name')} (missing)"
        form = f"{entry.get('formatting', 'alpaca')}{', pairwise' if entry.get('ranking') else ''}"
        swap.notes.append(f"dataset {name}: {where} -> {num_rows} synthetic rows ({form})")
    (data_dir / "dataset_info.json").write_text(json.dumps(new_info, indent=2) + "\n", encoding="utf-8")
    swap.note("dataset_dir", config.get("dataset_dir"), str(data_dir))
    config["dataset_dir"] = str(data_dir)
    old = config.get("max_samples")
    if old is None or int(old) > num_rows:
        config["max_samples"] = num_rows
        swap.note("max_samples", old, num_rows)


def swap_machine(swap: Swap, run_dir: Path) -> None:
    config = swap.config
    for key in REMOVED_KEYS:
        if config.get(key) is not None:
            swap.note(key, config.pop(key), None)
    for key, value in OFF_KEYS.items():
        if config.get(key):
            swap.note(key, config[key], value)
            config[key] = value
    if config.get("flash_attn") in ("fa2", "fa3"):
        swap.note("flash_attn", config["flash_attn"], "sdpa")
        config["flash_attn"] = "sdpa"
    if config.get("dataloader_num_workers"):
        swap.note("dataloader_num_workers", config["dataloader_num_workers"], 0)
        config["dataloader_num_workers"] = 0
    for key, value in (
        ("max_steps", 1),
        ("output_dir", str(run_dir / "output")),
        ("overwrite_output_dir", True),
        ("report_to", "none"),
    ):
        if config.get(key) != value:
            swap.note(key, config.get(key), value)
            config[key] = value
    if config.get("stage") in ("wspo", "wpo") or "logps_cache_dir" in config:
        swap.note("logps_cache_dir", config.get("logps_cache_dir"), str(run_dir / "cache"))
        config["logps_cache_dir"] = str(run_dir / "cache")


def swap_recipe(config: dict[str, Any], recipe: Path, run_dir: Path, models: TinyModels, num_rows: int | None) -> Swap:
    swap = Swap(dict(config))
    swap_models(swap, models)
    swap_data(swap, recipe, run_dir / "data", rows_needed(config, num_rows))
    swap_machine(swap, run_dir)
    return swap


def prepare_process(verbose: bool) -> None:
    r"""CPU only, offline, no torchrun: set before torch and the hub libraries are imported."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("WANDB_DISABLED", "true")
    for key in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "NNODES", "USE_RAY", "USE_MCA"):
        os.environ.pop(key, None)
    if not verbose:
        os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")


@contextlib.contextmanager
def fresh_run_state() -> Iterator[None]:
    r"""One run's process-wide state (environment, accelerate's singletons, process group) cleared after it."""
    environ = dict(os.environ)
    try:
        yield
    finally:
        import torch
        from accelerate.state import AcceleratorState, GradientState

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        os.environ.clear()
        os.environ.update(environ)


def parse_recipe(config: dict[str, Any]) -> None:
    r"""LLaMA-Factory's own parser (the plugin's arguments included), then the checks that the run makes before it
    loads anything (:func:`preflight`): raises the recipe's own error."""
    from llamafactory.hparams import get_train_args

    with fresh_run_state():
        preflight(*get_train_args(dict(config))[:4])


def preflight(model_args, data_args, training_args, finetuning_args) -> None:
    r"""The checks that a run of the recipe's stage makes before it loads a tokenizer or model, by the same functions
    and in the same order as the stage's workflow (``run_wspo``, ``run_wpo``, ``run_grpo``; ``tests/test_smoke.py``
    checks that each of their checks is made here), so that a dry run refuses what the real run would refuse first.
    For every stage, the data sets must be defined in ``dataset_info.json`` (LLaMA-Factory's own look-up)."""
    from llamafactory.data.parser import get_dataset_list

    get_dataset_list((data_args.dataset or []) + (data_args.eval_dataset or []), data_args.dataset_dir)
    stage = finetuning_args.stage
    if stage not in ("wspo", "wpo", "grpo"):
        return

    from ..host.packing import restore_neat_packing
    from ..train.trainer_utils import check_model_paths, check_packing

    restore_neat_packing(model_args, data_args)  # `neat_packing` as the recipe sets it (the parser hid it)
    if stage == "wspo":
        from ..data import check_wspo_data
        from ..train.wspo.workflow import WSPO_MODEL_KEYS

        check_model_paths(model_args, finetuning_args, WSPO_MODEL_KEYS)
        check_wspo_data(data_args, finetuning_args)
        if data_args.packing:
            check_packing(model_args, data_args, training_args, finetuning_args)
    elif stage == "wpo":
        from ..train.wpo.workflow import check_wpo_data

        check_model_paths(model_args, finetuning_args)
        check_wpo_data(data_args, finetuning_args.pref_loss == "kto")
        if data_args.packing:
            check_packing(model_args, data_args, training_args, finetuning_args)
    else:
        from ..data import check_grpo_data
        from ..host.compat import fix_trl_availability_flags
        from ..train.grpo.reward_funcs import resolve_reward_funcs

        check_model_paths(model_args, finetuning_args, ())
        check_grpo_data(data_args)
        resolve_reward_funcs(finetuning_args)
        fix_trl_availability_flags()  # before TRL's GRPO module is imported, as the stage dispatch does
        from ..train.grpo.trainer import build_grpo_config

        build_grpo_config(training_args, finetuning_args)


def train_recipe(config: dict[str, Any]) -> dict[str, Any]:
    from llamafactory.train.tuner import run_exp

    with fresh_run_state():
        run_exp(args=dict(config))
    output = Path(config["output_dir"])
    state = json.loads((output / "trainer_state.json").read_text(encoding="utf-8"))
    results_file = output / "train_results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else {}
    return {"global_step": state.get("global_step"), "train_loss": results.get("train_loss")}


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    r"""``key=value`` tokens are overrides of the recipes (values read as YAML); the rest are smoke's own."""
    import yaml

    from .args import KEY_VALUE

    rest, overrides = [], {}
    for token in argv:
        match = None if token.startswith("-") else KEY_VALUE.match(token)
        if match:
            overrides[match.group(1)] = yaml.safe_load(match.group(2)) if match.group(2) else None
        else:
            rest.append(token)
    return rest, overrides


def run(args: SmokeArguments, overrides: dict[str, Any]) -> int:
    prepare_process(args.verbose)
    recipes = [find_recipe(name) for name in args.recipes]
    configs = [load_recipe(recipe, overrides) for recipe in recipes]
    for recipe, config in zip(recipes, configs):
        check_recipe(config, recipe)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="llamafactory-wspo-smoke-"))
    models = TinyModels(work / "models")
    failures = {"parse": 0, "run": 0}
    try:
        for number, (recipe, config) in enumerate(zip(recipes, configs), start=1):
            run_dir = work / "runs" / f"{number:02d}-{recipe.stem}"
            print(f"\n== smoke {recipe} ({'dry run' if args.dry_run else 'one optimiser step on the CPU'})")
            started = time.monotonic()
            for warning in missing_runtime(config):
                print(f"   {warning}", file=sys.stderr)
            swap = swap_recipe(config, recipe, run_dir, models, args.num_rows)
            for note in swap.notes:
                print(f"   {note}")
            sys.stdout.flush()
            try:
                parse_recipe(swap.config)
            except (ValueError, KeyError, FileNotFoundError, OSError) as err:
                failures["parse"] += 1
                print(f"   FAILED (the recipe's own error): {type(err).__name__}: {err}", file=sys.stderr)
                continue
            if args.dry_run:
                print("   parsed by LLaMA-Factory's parser, the stage's checks hold: ok")
                continue
            try:
                result = train_recipe(swap.config)
            except Exception as err:  # the run's own error, whatever it is
                failures["run"] += 1
                print(f"   FAILED: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            print(
                f"   ok: {result['global_step']} optimiser step, train_loss {result['train_loss']}, "
                f"{time.monotonic() - started:.1f} s"
            )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"\ntiny models, data and outputs kept in {work}")
    total = len(recipes)
    failed = failures["parse"] + failures["run"]
    print(f"\nsmoke: {total - failed} of {total} recipe(s) ok")
    if failures["parse"]:
        return 2
    return 1 if failures["run"] else 0


def main(argv: Sequence[str]) -> int:
    def go() -> int:
        rest, overrides = split_overrides(argv)
        args = parse_args(SmokeArguments, rest, PROG, DESCRIPTION, positionals=("recipes*",), config_file=False)
        return run(args, overrides)

    return run_command(PROG, go)


ARGUMENTS = SmokeArguments  # the options of this subcommand
