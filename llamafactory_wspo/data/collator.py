"""Collators that pad the precomputed per-token columns beside ``input_ids`` and ``labels``.

Each example is looked up in the store by a hash of its tokens (:func:`example_uid`), so shuffling,
grouping by length or packing cannot misalign values and examples. The columns come out as
``(batch, length - 1)`` tensors aligned with ``labels[:, 1:]``, zero outside the responses.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.data import PairwiseDataCollatorWithPadding, SFTDataCollatorWith4DAttentionMask

from ..losses import response_mask
from ..precompute import LogpsStore, example_uid


def attach_logps(batch: dict[str, torch.Tensor], store: LogpsStore | None, uids: Sequence[int]) -> None:
    if store is not None:
        batch.update(store.gather(uids, response_mask(batch["labels"])))


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
