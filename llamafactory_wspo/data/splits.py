"""The splits of a dataset module (LLaMA-Factory's ``get_dataset`` result): the training set and the evaluation
set, or several named evaluation sets."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from datasets import Dataset


_SPLITS = ("train_dataset", "eval_dataset")


def map_splits(fn: Callable[["Dataset"], Any], dataset_module: dict[str, Any]) -> dict[str, Any]:
    r"""``dataset_module`` with ``fn`` applied to the training set and to each evaluation set.

    LLaMA-Factory's ``get_dataset`` gives one evaluation set, or a dict of named ones when ``eval_dataset``
    names several; the dict shape is kept.
    """
    out = dict(dataset_module)
    for key in _SPLITS:
        value = dataset_module.get(key)
        if isinstance(value, dict):
            out[key] = {name: fn(dataset) for name, dataset in value.items()}
        elif value is not None:
            out[key] = fn(value)

    return out


def dataset_splits(dataset_module: dict[str, Any]) -> list["Dataset"]:
    r"""The training set and every evaluation set of ``dataset_module``, as a flat list."""
    splits: list[Dataset] = []
    map_splits(splits.append, dataset_module)
    return splits
