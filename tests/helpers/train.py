"""Paths, the subprocess environment, ``llamafactory-cli train`` in a subprocess, configs and the trainer logs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DS_Z3_CONFIG = ROOT / "yaml_recipes" / "deepspeed" / "ds_z3_config.json"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def base_env(**extra: str) -> dict[str, str]:
    r"""The environment of a subprocess: offline, plugin enabled, one thread, no torchrun unless asked."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FORCE_TORCHRUN", "NPROC"))}
    env.update(
        {
            **OFFLINE,
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "DISABLE_VERSION_CHECK": "0",
            "WANDB_DISABLED": "true",
            "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": "1",
        }
    )
    env.pop("LLAMAFACTORY_WSPO_DISABLE", None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_train(
    config: dict[str, Any], workdir: Path, nproc: int | None = None, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    r"""Write ``config`` as YAML and run ``llamafactory-cli train`` on it in a subprocess."""
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = workdir / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config), encoding="utf-8")
    if nproc:
        env.update({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(nproc), "MASTER_PORT": str(free_port())})

    proc = subprocess.run(
        [str(BIN / "llamafactory-cli"), "train", str(recipe)],
        cwd=workdir,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    (workdir / "output.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if check and proc.returncode != 0:
        raise AssertionError(
            f"llamafactory-cli train failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}"
        )

    return proc


def log_history(output_dir: Path) -> list[dict[str, Any]]:
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def train_logs(output_dir: Path) -> list[dict[str, Any]]:
    return [entry for entry in log_history(output_dir) if "loss" in entry]


def wspo_config(assets: Path, workdir: Path, **overrides: Any) -> dict[str, Any]:
    r"""A 3-step full-tuning WSPO run on the tiny assets; an override of ``None`` removes the key."""
    config = {
        "model_name_or_path": str(assets / "strong"),
        "weak_base_model": str(assets / "weak"),
        "weak_aligned_model": str(assets / "weak_aligned"),
        "stage": "wspo",
        "do_train": True,
        "finetuning_type": "full",
        "pref_beta": 0.1,
        "pref_loss": "sigmoid",
        "dataset": "tiny_sft",
        "dataset_dir": str(assets / "data"),
        "template": "qwen",
        "cutoff_len": 128,
        "max_samples": 64,
        "output_dir": str(workdir / "out"),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_shuffling": True,
        "seed": 42,
        "logps_cache_dir": str(workdir / "cache"),
        "preprocessing_num_workers": None,
    }
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


def wpo_config(assets: Path, workdir: Path, **overrides: Any) -> dict[str, Any]:
    config = wspo_config(assets, workdir, **{"stage": "wpo", "dataset": "tiny_pairs", "max_samples": 16, **overrides})
    for key in ("weak_base_model", "weak_aligned_model"):
        config.pop(key)
    return config


def grpo_config(assets: Path, workdir: Path, **overrides: Any) -> dict[str, Any]:
    config = wspo_config(
        assets,
        workdir,
        **{
            "stage": "grpo",
            "model_name_or_path": str(assets / "weak"),
            "grpo_reward_funcs": "length",
            "length_reward_min": 3,
            "length_reward_max": 5,
            "grpo_num_generations": 4,
            "grpo_max_completion_length": 16,
            "grpo_beta": 0.0,
            **overrides,
        },
    )
    for key in ("weak_base_model", "weak_aligned_model", "pref_beta", "pref_loss", "disable_shuffling"):
        config.pop(key, None)
    return config
