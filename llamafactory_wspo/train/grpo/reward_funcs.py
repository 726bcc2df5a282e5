"""Resolve the reward functions named in ``grpo_reward_funcs``, before any model loads."""

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...hparams import PluginInputError
from ...length_reward import LengthReward


if TYPE_CHECKING:
    from ...hparams import GRPOArguments


def resolve_reward_func(name: str, finetuning_args: "GRPOArguments") -> Callable[..., Any] | str:
    r"""One entry of ``grpo_reward_funcs``: a TRL reward function, or the path of a local reward model."""
    if name == "length":
        return LengthReward(finetuning_args.length_reward_min, finetuning_args.length_reward_max)

    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)  # a sequence-classification reward model, loaded by TRL

    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name or not attr:
        raise PluginInputError(
            f"`grpo_reward_funcs`: {name!r} is not a reward function. Use `length`, an importable `module:function`, "
            "or the path of an existing local reward model directory."
        )

    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginInputError(
            f"`grpo_reward_funcs`: cannot import {name!r} ({exc}). Check the module is importable in the training "
            "environment (on PYTHONPATH or installed) and that it defines that function."
        ) from None

    if not callable(func):
        raise PluginInputError(f"`grpo_reward_funcs`: {name!r} is not callable.")

    return func


def resolve_reward_funcs(finetuning_args: "GRPOArguments") -> list[Callable[..., Any] | str]:
    names = [name.strip() for name in finetuning_args.grpo_reward_funcs.split(",") if name.strip()]
    return [resolve_reward_func(name, finetuning_args) for name in names]
