"""``llamafactory.webui.control``: the plugin stages in the "Stage" list, and the data sets listed for them."""

import functools

from ..host.checks import HostMismatch, host_attr, host_module
from .common import UI_STAGES, get_stage
from .locales import LOCALES


def check(control) -> None:
    r"""The data set list, LLaMA-Board's stage tables, and its label table."""
    host_attr(control, "list_datasets", ("dataset_dir", "training_stage"))
    host_attr(control, "load_dataset_info", ("dataset_dir",))
    host_attr(control, "DEFAULT_DATA_DIR")
    constants = host_module("llamafactory.extras.constants")
    for name, kind in (("TRAINING_STAGES", dict), ("STAGES_USE_PAIR_DATA", set)):
        if not isinstance(host_attr(constants, name), kind):
            raise HostMismatch(f"llamafactory.extras.constants.{name} is not a {kind.__name__}")

    labels = host_attr(host_module("llamafactory.webui.locales"), "LOCALES")
    if not isinstance(labels, dict) or "pref_beta" not in labels:
        raise HostMismatch("llamafactory.webui.locales.LOCALES has no entry pref_beta")


def patch(control):
    r"""WSPO lists data sets of both kinds; the stages and their labels join LLaMA-Board once it is all checked."""
    control.list_datasets = _wrap_list_datasets(control, control.list_datasets)
    return _add_stages


def _add_stages() -> None:
    r"""Add ``WSPO``, ``WPO`` and ``GRPO`` after the stock stages (``wpo`` lists pairwise data sets), and labels."""
    from llamafactory.extras import constants
    from llamafactory.webui import locales

    for label, stage in UI_STAGES.items():  # the same dict objects that the Train tab and the runner read
        constants.TRAINING_STAGES.setdefault(label, stage)

    constants.STAGES_USE_PAIR_DATA.add("wpo")
    for key, table in LOCALES.items():
        locales.LOCALES.setdefault(key, table)


def _wrap_list_datasets(control, original):
    r"""WSPO trains on SFT-format and on pairwise data sets: list both; other stages list what they did."""

    @functools.wraps(original)
    def list_datasets(dataset_dir: str | None = None, training_stage: str | None = None):
        if training_stage is None:
            return original(dataset_dir)

        if get_stage(training_stage) != "wspo":
            return original(dataset_dir, training_stage)

        import gradio as gr

        dataset_info = control.load_dataset_info(dataset_dir if dataset_dir is not None else control.DEFAULT_DATA_DIR)
        return gr.Dropdown(choices=list(dataset_info))

    return list_datasets
