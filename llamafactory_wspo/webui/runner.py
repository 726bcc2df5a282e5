"""``llamafactory.webui.runner``: the arguments that "Preview command", "Start" and "Save arguments" build."""

import functools
import json
from typing import Any

from ..host.checks import HostMismatch, host_attr, host_module
from .common import FIELDS, STAGE_FIELDS, STAGE_HOST_KEYS, get_stage, localize
from .locales import ERR_GRPO_PACKING, ERR_NO_WEAK_MODEL


def check(runner) -> None:
    r"""The runner methods wrapped below, and ``_clean_cmd`` as the step of every generated command."""
    host_attr(runner, "Runner._initialize", ("self", "data", "do_train", "from_preview"))
    host_attr(runner, "Runner._parse_train_args", ("self", "data"))
    host_attr(runner, "Runner._build_config_dict", ("self", "data"))
    common = host_module("llamafactory.webui.common")
    host_attr(common, "_clean_cmd", ("args",))
    labels = host_attr(host_module("llamafactory.webui.locales"), "LOCALES")  # named in the GRPO packing message
    if not isinstance(labels, dict) or not {"packing", "neat_packing"} <= set(labels):
        raise HostMismatch("llamafactory.webui.locales.LOCALES has no entries packing and neat_packing")
    for name in ("gen_cmd", "save_cmd"):
        if "_clean_cmd" not in host_attr(common, name).__code__.co_names:
            raise HostMismatch(f"llamafactory.webui.common.{name} no longer calls _clean_cmd")


def patch(runner) -> None:
    r"""A plugin stage gets its fields; a WSPO run without weak models, and GRPO with a packing box ticked, are
    refused; stock stages are unchanged."""
    from llamafactory.webui import common

    cls = runner.Runner
    cls._initialize = _wrap_initialize(cls._initialize)
    cls._parse_train_args = _wrap_parse_train_args(cls._parse_train_args)
    cls._build_config_dict = _wrap_build_config_dict(cls._build_config_dict)
    common._clean_cmd = _wrap_clean_cmd(common._clean_cmd)


def _getter(runner, data: dict[Any, Any]):
    return lambda elem_id: data[runner.manager.get_elem_by_id(elem_id)]


def _wrap_initialize(original):
    @functools.wraps(original)
    def _initialize(self, data, do_train: bool, from_preview: bool) -> str:
        error = original(self, data, do_train, from_preview)
        if error or not do_train:
            return error

        get = _getter(self, data)
        stage, lang = get_stage(get("train.training_stage")), get("top.lang")
        if stage == "wspo" and not (get("train.weak_base_model") and get("train.weak_aligned_model")):
            return localize(ERR_NO_WEAK_MODEL, lang)

        if stage == "grpo" and (get("train.packing") or get("train.neat_packing")):
            return _grpo_packing_message(lang)

        return error

    return _initialize


def _grpo_packing_message(lang: str | None) -> str:
    r"""GRPO samples its outputs and packs nothing (LLaMA-Factory refuses its ``neat_packing``): untick both boxes,
    named by LLaMA-Board's own labels. WSPO and WPO take them as they are (``packing``, ``neat_packing``)."""
    from llamafactory.webui.locales import LOCALES as HOST_LOCALES

    labels = {key: localize(HOST_LOCALES[key], lang)["label"] for key in ("packing", "neat_packing")}
    return localize(ERR_GRPO_PACKING, lang).format(**labels)


def _wrap_parse_train_args(original):
    @functools.wraps(original)
    def _parse_train_args(self, data) -> dict[str, Any]:
        args = original(self, data)
        stage = args.get("stage")
        if stage not in STAGE_FIELDS:
            return args

        get = _getter(self, data)
        keys = STAGE_HOST_KEYS[stage] + STAGE_FIELDS[stage]
        extra_args = json.loads(get("train.extra_args"))  # valid: checked by `_initialize`
        for key in keys:  # pref_beta: gamma for WSPO, beta of the preference loss for WPO
            if key not in extra_args:  # "Extra arguments" win, e.g. {"pref_loss": "robust"} for WPO
                value = get(f"train.{key}")
                args[key] = value.strip() if isinstance(value, str) else value

        return args

    return _parse_train_args


def _wrap_build_config_dict(original):
    r"""Stock stages save the configuration they saved without the plugin (loadable by stock LLaMA-Board)."""

    @functools.wraps(original)
    def _build_config_dict(self, data) -> dict[str, Any]:
        config = original(self, data)
        if get_stage(config.get("train.training_stage")) not in STAGE_FIELDS:
            for key in FIELDS:
                config.pop(f"train.{key}", None)

        return config

    return _build_config_dict


def _wrap_clean_cmd(original):
    r"""LLaMA-Board drops every ``False`` argument; ``precompute_logps: false`` must reach the trainer."""

    @functools.wraps(original)
    def _clean_cmd(args: dict[str, Any]) -> dict[str, Any]:
        cleaned = original(args)
        if args.get("stage") in STAGE_FIELDS and isinstance(args.get("precompute_logps"), bool):
            cleaned["precompute_logps"] = args["precompute_logps"]

        return cleaned

    return _clean_cmd
