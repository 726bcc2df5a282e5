"""Collators that pad the precomputed per-token columns beside ``input_ids`` and ``labels``.

Each example is looked up in the store by a hash of its tokens (:func:`row_uid`), so shuffling,
grouping by length or packing cannot misalign values and examples. The columns come out as
``(batch, length - 1)`` tensors aligned with ``labels[:, 1:]``, zero outside the responses.

With cross-tokenizer WSPO the rows also carry the weak rendering (``weak_*`` columns, see
:mod:`llamafactory_wspo.data.weak_side`): it keys the store together with the strong ids, and without a store
(per-step mode) it is padded into the batch for the weak models.
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

from ..logps.store import KL_PREFIX, LogpsStore, row_uid
from ..losses import IGNORE_INDEX, response_mask
from ..projection import PADDING, WEAK_ATTENTION_MASK, WEAK_COLUMNS, WEAK_INPUT_IDS, WEAK_LABELS, WEAK_PROJECTION


class _StoredColumnsMixin:
    r"""The LLaMA-Factory collator that follows in the bases, plus the stored columns of each row (``store``)."""

    store: LogpsStore | None

    def row_uids(self, features: list[dict[str, Any]]) -> dict[str, list[int]]:
        r"""The uids of the batch's rows in their order, by column prefix (``""``, or ``KL_PREFIX`` for KL rows)."""
        raise NotImplementedError

    @override
    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        uids = self.row_uids(features)  # before the host's collator, which may change the features
        features, weak = _split_weak_columns(features)
        batch = super().__call__(features)
        if self.store is not None:
            for prefix, prefix_uids in uids.items():
                values = self.store.gather(prefix_uids, response_mask(batch[f"{prefix}labels"]))
                batch.update({f"{prefix}{name}": value for name, value in values.items()})
        elif weak:  # per-step cross-tokenizer WSPO: the weak models run on the weak rendering
            batch.update(pad_weak_columns(weak))

        return batch


def _split_weak_columns(features: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    r"""The features without the weak columns of cross-tokenizer WSPO (the host cannot pad them), and those columns."""
    if not features or WEAK_INPUT_IDS not in features[0]:
        return features, []

    stripped = [{key: value for key, value in feature.items() if key not in WEAK_COLUMNS} for feature in features]
    return stripped, [{key: feature[key] for key in WEAK_COLUMNS} for feature in features]


def pad_weak_columns(weak: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    r"""Right-pad the weak columns: ``weak_input_ids`` (0), ``weak_attention_mask``, ``weak_labels``
    (``IGNORE_INDEX``) and ``weak_projection`` (``PADDING``)."""
    width = max(len(row[WEAK_INPUT_IDS]) for row in weak)
    depth = max(max((len(row[WEAK_PROJECTION]) for row in weak), default=0), 1)

    def pad(key: str, value: int, size: int) -> torch.Tensor:
        return torch.tensor([list(row[key]) + [value] * (size - len(row[key])) for row in weak], dtype=torch.long)

    input_ids = pad(WEAK_INPUT_IDS, 0, width)
    mask = torch.tensor([[1] * len(row[WEAK_INPUT_IDS]) + [0] * (width - len(row[WEAK_INPUT_IDS])) for row in weak])
    return {
        WEAK_INPUT_IDS: input_ids,
        WEAK_ATTENTION_MASK: mask,
        WEAK_LABELS: pad(WEAK_LABELS, IGNORE_INDEX, width),
        WEAK_PROJECTION: pad(WEAK_PROJECTION, PADDING, depth),
    }


def _uids(features: Sequence[dict[str, Any]], prefix: str = "") -> list[int]:
    return [row_uid(feature, prefix) for feature in features]


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
