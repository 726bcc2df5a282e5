"""Collators that pad the precomputed per-token columns beside ``input_ids`` and ``labels``.

Each example is looked up in the store by a hash of its tokens (:func:`example_uid`), so shuffling,
grouping by length or packing cannot misalign values and examples. The columns come out as
``(batch, length - 1)`` tensors aligned with ``labels[:, 1:]``, zero outside the responses.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.data import (
    KTODataCollatorWithPadding,
    PairwiseDataCollatorWithPadding,
    SFTDataCollatorWith4DAttentionMask,
)
from typing_extensions import override

from ..losses import response_mask
from ..precompute import KL_PREFIX, LogpsStore, example_uid


class _StoredColumnsMixin:
    r"""The LLaMA-Factory collator that follows in the bases, plus the stored columns of each row (``store``)."""

    store: LogpsStore | None

    def row_uids(self, features: list[dict[str, Any]]) -> dict[str, list[int]]:
        r"""The uids of the batch's rows in their order, by column prefix (``""``, or ``KL_PREFIX`` for KL rows)."""
        raise NotImplementedError

    @override
    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        uids = self.row_uids(features)  # before the host's collator, which may change the features
        batch = super().__call__(features)
        if self.store is not None:
            for prefix, prefix_uids in uids.items():
                values = self.store.gather(prefix_uids, response_mask(batch[f"{prefix}labels"]))
                batch.update({f"{prefix}{name}": value for name, value in values.items()})

        return batch


def _uids(features: Sequence[dict[str, Any]], prefix: str = "") -> list[int]:
    return [example_uid(feature[f"{prefix}input_ids"], feature[f"{prefix}labels"]) for feature in features]


@dataclass
class SFTDataCollatorWithLogps(_StoredColumnsMixin, SFTDataCollatorWith4DAttentionMask):
    r"""LLaMA-Factory's SFT collator, plus the stored per-token values of each example."""

    store: LogpsStore | None = None

    @override
    def row_uids(self, features: list[dict[str, Any]]) -> dict[str, list[int]]:
        return {"": _uids(features)}


@dataclass
class PairwiseDataCollatorWithLogps(_StoredColumnsMixin, PairwiseDataCollatorWithPadding):
    r"""LLaMA-Factory's pairwise collator (chosen rows, then rejected rows), plus the stored values of each row."""

    store: LogpsStore | None = None

    @override
    def row_uids(self, features: list[dict[str, Any]]) -> dict[str, list[int]]:
        return {"": _uids(features, "chosen_") + _uids(features, "rejected_")}


@dataclass
class KTODataCollatorWithLogps(_StoredColumnsMixin, KTODataCollatorWithPadding):
    r"""LLaMA-Factory's KTO collator, plus the stored values of each target and each KL row (``KL_PREFIX``)."""

    store: LogpsStore | None = None

    @override
    def row_uids(self, features: list[dict[str, Any]]) -> dict[str, list[int]]:
        return {prefix: _uids(features, prefix) for prefix in ("", KL_PREFIX)}
