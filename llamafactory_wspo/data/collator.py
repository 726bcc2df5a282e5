"""Pads the precomputed per-token columns beside ``input_ids`` and ``labels``."""

from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.data import SFTDataCollatorWith4DAttentionMask

from ..losses import response_mask
from ..precompute import LogpsStore, example_uid


@dataclass
class WSPODataCollator(SFTDataCollatorWith4DAttentionMask):
    r"""LLaMA-Factory's SFT collator, plus the stored per-token values of each example.

    Each example is looked up in ``store`` by a hash of its tokens (:func:`example_uid`), so
    shuffling, grouping by length or packing cannot misalign values and examples. The columns come
    out as ``(batch, length - 1)`` tensors aligned with ``labels[:, 1:]``, zero outside responses.
    """

    store: LogpsStore | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        uids = [example_uid(feature["input_ids"], feature["labels"]) for feature in features]
        batch = super().__call__(features)
        if self.store is not None:
            batch.update(self.store.gather(uids, response_mask(batch["labels"])))

        return batch
