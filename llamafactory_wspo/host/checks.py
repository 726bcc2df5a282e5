"""Every point of LLaMA-Factory that the plugin relies on, and the primitives that check one.

A check reads a module that the host has imported already (or, for a module the host imports only when a stage runs,
its source) and raises :class:`HostMismatch` naming the point that is missing or has changed: names, signatures,
the shape of a ``Literal``. The patches (:mod:`.patches`) and LLaMA-Board's counterparts (:mod:`llamafactory_wspo.webui`)
check each point before they rely on it. This module imports nothing of the plugin.
"""

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import sys
import textwrap
import typing
from collections.abc import Callable
from typing import Any, Literal


class HostMismatch(Exception):
    r"""A point of LLaMA-Factory that a patch relies on is missing or has changed; the message names it."""


def host_attr(owner, qualname: str, params: tuple[str, ...] | None = None, point: str | None = None) -> Any:
    r"""``owner.<qualname>``, checked: present and, given ``params``, taking those leading parameters.

    ``point`` names it in the message (default: the owner module's name and ``qualname``).
    """
    point = point or f"{getattr(owner, '__name__', owner)}.{qualname}"
    obj = owner
    for attr in qualname.split("."):
        if not hasattr(obj, attr):
            raise HostMismatch(f"{point} is missing")
        obj = getattr(obj, attr)

    if params is not None:
        try:
            names = tuple(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            raise HostMismatch(f"{point} is not callable") from None
        _check_parameters(point, names, params)

    return obj


def _check_parameters(point: str, names: tuple[str, ...], params: tuple[str, ...]) -> None:
    if names[: len(params)] != params:
        raise HostMismatch(f"{point} takes ({', '.join(names)}) instead of ({', '.join(params)}, ...)")


def source_attr(module_name: str, qualname: str, params: tuple[str, ...] | None = None) -> None:
    r"""The check of :func:`host_attr` on the source of a module that the host imports only when it needs it.

    ``qualname`` is a function or class defined in the module, or a method defined in such a class.
    """
    point = f"{module_name}.{qualname}"
    try:
        spec = importlib.util.find_spec(module_name)
    except ImportError:
        spec = None
    source = spec.loader.get_source(module_name) if spec is not None and spec.loader is not None else None
    if source is None:
        raise HostMismatch(f"{module_name} cannot be found")

    scope: list[ast.stmt] = ast.parse(source).body
    for attr in qualname.split("."):
        node = next((n for n in scope if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == attr), None)
        if node is None:
            raise HostMismatch(f"{point} is missing")
        scope = node.body

    if params is not None:
        if not isinstance(node, ast.FunctionDef):
            raise HostMismatch(f"{point} is not a function")
        _check_parameters(point, tuple(arg.arg for arg in (*node.args.posonlyargs, *node.args.args)), params)


def literal_choices(cls: type, name: str) -> tuple[str, ...]:
    r"""The choices of the dataclass field ``cls.<name>``, declared as a ``Literal`` of strings."""
    point = f"{cls.__module__}.{cls.__qualname__}.{name}"
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    if name not in fields:
        raise HostMismatch(f"{point} is missing")

    annotation = fields[name].type
    if isinstance(annotation, str):
        annotation = typing.get_type_hints(cls).get(name)
    choices = typing.get_args(annotation)
    if typing.get_origin(annotation) is not Literal or not all(isinstance(choice, str) for choice in choices):
        raise HostMismatch(f"{point} is {annotation!r}, not a Literal of names")

    return choices


def keyword_names(function: Callable) -> set[str]:
    r"""The keyword names in ``function``'s calls (how LLaMA-Board's tabs register their elements)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg}


def host_module(name: str):
    module = sys.modules.get(name)  # imported by the host already (a moved module is looked for)
    if module is None:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise HostMismatch(f"{name} cannot be imported ({exc})") from None
    return module


# FinetuningArguments fields that the plugin's arguments and stages read.
FINETUNING_FIELDS = ("stage", "pref_beta", "pref_ftx", "pref_loss", "dpo_label_smoothing", "ref_model")
# The tuner's names that `_plugin_training_function` uses (tests/test_host_compat.py keeps this list complete).
TUNER_NAMES = (
    "get_train_args",
    "LogCallback",
    "PissaConvertCallback",
    "get_swanlab_callback",
    "EarlyStoppingCallback",
    "TorchProfilerCallback",
    "ModuleProfilerCallback",
    "ReporterCallback",
    "is_ray_available",
    "dist",
    "logger",
)
# What the plugin's stages import from LLaMA-Factory (train/, data/, frozen.py, ...; tests/test_host_compat.py keeps
# this complete): each name, and the leading parameters they pass where they call it.
STAGE_APIS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "llamafactory.data": {
        "get_dataset": ("template", "model_args", "data_args", "training_args", "stage", "tokenizer", "processor"),
        "get_template_and_fix_tokenizer": ("tokenizer", "data_args"),
        "SFTDataCollatorWith4DAttentionMask": ("tokenizer", "model"),
        "PairwiseDataCollatorWithPadding": ("tokenizer", "model"),
        "KTODataCollatorWithPadding": ("tokenizer", "model"),
        "Template": None,
    },
    # wrapped while a cross-tokenizer WSPO data set is built (host/dataset_pass.py)
    "llamafactory.data.loader": {
        "_get_dataset_processor": ("data_args", "stage", "template", "tokenizer", "processor", "do_generate")
    },
    "llamafactory.data.parser": {"get_dataset_list": ("dataset_names", "dataset_dir")},
    "llamafactory.data.processor": {
        "DatasetProcessor": None,
        "PairwiseDatasetProcessor": None,
        "SupervisedDatasetProcessor": None,
    },
    # the host's greedy packing, for the rows it cannot pack itself (data/packed.py, data/packed_pairs.py)
    "llamafactory.data.processor.processor_utils": {"greedy_knapsack": ("numbers", "capacity")},
    "llamafactory.data.template": {"TEMPLATES": None},
    "llamafactory.extras.constants": {"IGNORE_INDEX": None},
    "llamafactory.extras.logging": {"get_logger": ("name",)},
    "llamafactory.extras.misc": {"calculate_tps": ("dataset", "metrics", "stage")},
    "llamafactory.extras.ploting": {"plot_loss": ("save_dictionary", "keys")},
    "llamafactory.hparams": {
        "DataArguments": None,
        "FinetuningArguments": None,
        "ModelArguments.copyfrom": ("source",),
    },
    "llamafactory.model": {
        "load_model": ("tokenizer", "model_args", "finetuning_args", "is_trainable"),
        "load_tokenizer": ("model_args",),
    },
    "llamafactory.model.loader": {"load_config": ("model_args",)},
    "llamafactory.train.trainer_utils": {
        "create_custom_optimizer": ("model", "training_args", "finetuning_args"),
        "create_custom_scheduler": ("training_args", "num_training_steps", "optimizer"),
        "create_modelcard_and_push": ("trainer", "model_args", "data_args", "training_args", "finetuning_args"),
        "nested_detach": ("tensors", "clone"),
    },
    "llamafactory.train.pt.trainer": {"CustomTrainer.__init__": ("self", "finetuning_args", "processor")},
    "llamafactory.train.dpo.trainer": {
        "CustomDPOTrainer.concatenated_forward": ("self", "model", "batch"),
        "CustomDPOTrainer.compute_reference_log_probs": ("self", "model", "batch"),
        "CustomDPOTrainer.compute_preference_loss": (
            "self",
            "policy_chosen_logps",
            "policy_rejected_logps",
            "reference_chosen_logps",
            "reference_rejected_logps",
        ),
        "CustomDPOTrainer.get_batch_loss_metrics": ("self", "model", "batch", "train_eval"),
    },
    "llamafactory.train.kto.trainer": {
        "CustomKTOTrainer.concatenated_forward": ("self", "model", "batch"),
        "CustomKTOTrainer.compute_reference_log_probs": ("self", "model", "batch"),
        "CustomKTOTrainer.get_batch_loss_metrics": ("self", "model", "batch"),
    },
}


def check_parser(parser, added: dict[str, tuple[str, ...]]) -> None:
    r"""The training parser: its argument classes, their parsing function, and the ``Literal`` fields to which the
    plugin adds choices (``added``: field name -> the plugin's choices, none of which the host may have already)."""
    cls = host_attr(parser, "FinetuningArguments")
    train_args = host_attr(parser, "_TRAIN_ARGS")
    if not isinstance(train_args, list) or cls not in train_args:
        raise HostMismatch(f"{parser.__name__}._TRAIN_ARGS is not a list holding FinetuningArguments")

    host_attr(parser, "_parse_train_args", ("args",))
    host_attr(parser, "read_args", ("args",))
    for name in FINETUNING_FIELDS:
        if name not in {f.name for f in dataclasses.fields(cls)}:
            raise HostMismatch(f"{cls.__module__}.FinetuningArguments.{name} is missing")

    for name, plugin_choices in added.items():
        taken = set(literal_choices(cls, name)) & set(plugin_choices)
        if taken:
            raise HostMismatch(f"{cls.__module__}.FinetuningArguments.{name} already has {', '.join(sorted(taken))}")


def check_tuner(tuner) -> None:
    r"""The tuner's dispatch (``run_exp`` → ``_training_function(config)`` → stage chain), and the stage APIs."""
    host_attr(tuner, "_training_function", ("config",))
    run_exp = host_attr(tuner, "run_exp", ("args", "callbacks"))
    if "_training_function" not in run_exp.__code__.co_names:
        raise HostMismatch(f"{tuner.__name__}.run_exp no longer dispatches through _training_function")
    if "stage" not in tuner._training_function.__code__.co_names:
        raise HostMismatch(f"{tuner.__name__}._training_function no longer dispatches on finetuning_args.stage")

    for name in TUNER_NAMES:
        host_attr(tuner, name)

    for module_name, names in STAGE_APIS.items():
        module = sys.modules.get(module_name)  # the tuner imports most; the DPO trainer is read from its source
        for qualname, params in names.items():
            if module is None:
                source_attr(module_name, qualname, params)
            else:
                host_attr(module, qualname, params, point=f"{module_name}.{qualname}")
