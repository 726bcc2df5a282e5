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

from ..losses import response_mask
from ..precompute import LogpsStore, example_uid


def attach_logps(
    batch: dict[str, torch.Tensor], store: LogpsStore | None, uids: Sequence[int], prefix: str = ""
) -> None:
    r"""Add the stored columns of ``uids`` to ``batch``, aligned with ``batch[prefix + "labels"]``."""
    if store is not None:
        values = store.gather(uids, response_mask(batch[f"{prefix}labels"]))
        batch.update({f"{prefix}{name}": value for name, value in values.items()})


@dataclass
class SFTDataCollatorWithLogps(SFTDataCollatorWith4DAttentionMask):
    r"""LLaMA-Factory's SFT collator, plus the stored per-token values of each example."""

    store: LogpsStore | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        uids = [example_uid(feature["input_ids"], feature["labels"]) for feature in features]
        batch = super().__call__(features)
        attach_logps(batch, self.store, uids)
        return batch


@dataclass
class PairwiseDataCollatorWithLogps(PairwiseDataCollatorWithPadding):
    r"""LLaMA-Factory's pairwise collator (chosen rows, then rejected rows), plus the stored values of each row."""

    store: LogpsStore | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        uids = [
            example_uid(feature[f"{side}_input_ids"], feature[f"{side}_labels"])
            for side in ("chosen", "rejected")
            for feature in features
        ]
        batch = super().__call__(features)
        attach_logps(batch, self.store, uids)
        return batch


@dataclass
class KTODataCollatorWithLogps(KTODataCollatorWithPadding):
    r"""LLaMA-Factory's KTO collator, plus the stored values of each target and each KL row (``kl_`` prefix)."""

    store: LogpsStore | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        uids = {
            prefix: [example_uid(feature[f"{prefix}input_ids"], feature[f"{prefix}labels"]) for feature in features]
            for prefix in ("", "kl_")
        }
        batch = super().__call__(features)
        for prefix, prefix_uids in uids.items():
            attach_logps(batch, self.store, prefix_uids, prefix)

        return batch
