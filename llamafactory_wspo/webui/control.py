"""``llamafactory.webui.control``: the plugin stages in the "Stage" list, and the data sets listed for them."""

import functools

from .common import UI_STAGES, get_stage
from .locales import LOCALES


def patch(control) -> None:
    r"""Add ``WSPO`` and ``WPO`` after the stock stages; ``wpo`` lists pairwise data sets, WSPO both kinds."""
    from llamafactory.extras import constants
    from llamafactory.webui import locales

    for label, stage in UI_STAGES.items():  # the same dict objects that the Train tab and the runner read
        constants.TRAINING_STAGES.setdefault(label, stage)

    constants.STAGES_USE_PAIR_DATA.add("wpo")
    for key, table in LOCALES.items():
        locales.LOCALES.setdefault(key, table)

    control.list_datasets = _wrap_list_datasets(control, control.list_datasets)


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
