"""Padding-free WPO pairs: several pairs' chosen and rejected sequences in one row, each attending only to itself.

LLaMA-Factory packs SFT rows only; its pairwise processing (``get_dataset`` with stage ``rm``) does not pack. Here
the tokenized pairs are laid out as LLaMA-Factory lays out its packed SFT rows with ``neat_packing``
(``PackedSupervisedDatasetProcessor``): pairs are grouped by its greedy knapsack into rows of at most ``cutoff_len``
tokens, a pair's chosen sequence directly followed by its rejected one, so that the sequences of a row are
``chosen_1, rejected_1, chosen_2, rejected_2, ...``. ``position_ids`` restart at 0 for every sequence and
``attention_mask`` holds the sequence's number in its row (1, 2, ...; 0 on padding), which the host's
``SFTDataCollatorWith4DAttentionMask`` turns into a block-diagonal causal mask (eager, SDPA) or drops for
flash-attention's varlen path (one row per batch; ``position_ids`` carry the boundaries). The first label of each
sequence is ``IGNORE_INDEX``: an unpacked row never scores its first token, and in a packed row it would be
predicted from the previous sequence.

A pair longer than ``cutoff_len`` (each of its sequences is at most ``cutoff_len`` after the host's truncation, the
two together may be longer) gets a row of its own. The trainer finds the sequences again from the restarts of
``position_ids`` (:func:`llamafactory_wspo.packing.segment_ids`).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamafactory.data import SFTDataCollatorWith4DAttentionMask
from llamafactory.data.processor.processor_utils import greedy_knapsack
from typing_extensions import override

from ..hparams import PluginInputError
from ..logging import get_logger
from ..logps.store import LogpsStore, row_uid
from ..losses import IGNORE_INDEX
from .collator import _StoredColumnsMixin


if TYPE_CHECKING:
    from datasets import Dataset


logger = get_logger(__name__)


PACKED_PAIR_COLUMNS = ("input_ids", "attention_mask", "position_ids", "labels")
_PAIR_SOURCE_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
_MEDIA_COLUMNS = ("images", "videos", "audios")


def pack_pairs(dataset: "Dataset", cutoff_len: int) -> "Dataset":
    r"""LLaMA-Factory's pairwise rows (``chosen_*``, ``rejected_*``) packed into rows of :data:`PACKED_PAIR_COLUMNS`.

    Deterministic: the same data and ``cutoff_len`` give the same rows on every rank and in every run (the
    precompute pass and training see the same rows). Within a row the pairs keep their order in ``dataset``.
    """
    from datasets import Dataset

    for name in (name for name in _MEDIA_COLUMNS if name in dataset.column_names):
        if any(dataset[name]):
            raise PluginInputError(
                "`packing` for `stage: wpo` takes text-only pairs, but this data set has images, videos or audios: "
                "set `packing: false`."
            )

    lengths = _pair_lengths(dataset)
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        if length <= cutoff_len:
            by_length.setdefault(length, []).append(index)

    fitting = greedy_knapsack([length for length in lengths if length <= cutoff_len], cutoff_len)
    rows = [sorted(by_length[length].pop(0) for length in knapsack) for knapsack in fitting]
    long = [[index] for index, length in enumerate(lengths) if length > cutoff_len]
    if long:
        logger.info_rank0(
            f"Packing: {len(long)} of {len(lengths)} pairs are longer than `cutoff_len: {cutoff_len}` (chosen and "
            "rejected together) and get a row of their own."
        )

    source = dataset.select_columns(list(_PAIR_SOURCE_COLUMNS))

    def build(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        pairs = source[[index for row in batch["pairs"] for index in row]]
        out: dict[str, list[list[int]]] = {name: [] for name in PACKED_PAIR_COLUMNS}
        position = 0
        for row_pairs in batch["pairs"]:
            row: dict[str, list[int]] = {name: [] for name in PACKED_PAIR_COLUMNS}
            for number in range(1, 2 * len(row_pairs) + 1):  # chosen_1, rejected_1, chosen_2, ...
                side = "chosen" if number % 2 else "rejected"
                input_ids, labels = pairs[f"{side}_input_ids"][position], pairs[f"{side}_labels"][position]
                row["input_ids"] += input_ids
                row["labels"] += [IGNORE_INDEX, *labels[1:]]
                row["position_ids"] += range(len(input_ids))
                row["attention_mask"] += [number] * len(input_ids)
                position += side == "rejected"

            for name in PACKED_PAIR_COLUMNS:
                out[name].append(row[name])

        return out

    plan = Dataset.from_dict({"pairs": rows + long})
    packed = plan.map(build, batched=True, batch_size=256, remove_columns=["pairs"], desc="Packing pairs")
    logger.info_rank0(f"Packing: {len(lengths)} pairs in {len(packed)} rows of at most {cutoff_len} tokens.")
    return packed


def _pair_lengths(dataset: "Dataset") -> list[int]:
    r"""The tokens of each pair, chosen and rejected together, read from Arrow without building the rows."""
    import pyarrow.compute as pc

    lengths: list[int] = []
    columns = ["chosen_input_ids", "rejected_input_ids"]
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        chosen, rejected = (pc.list_value_length(batch[name]) for name in columns)
        lengths += pc.add(chosen, rejected).to_pylist()

    return lengths


@dataclass
class _PaddedPackedRows(SFTDataCollatorWith4DAttentionMask):
    r"""The host's packed-row collator for rows of different lengths: each column right-padded to the batch's width
    (``input_ids`` with the pad token, ``attention_mask`` 0, ``position_ids`` 0, ``labels`` ``IGNORE_INDEX``)
    before the host pads, which would leave ``position_ids`` unpadded."""

    @override
    def __post_init__(self):
        super().__post_init__()
        if self.get_rope_func is not None:
            raise PluginInputError(
                "`packing` for `stage: wpo` does not support models with M-RoPE position ids: set `packing: false`."
            )

        self.block_diag_attn = True
        self.neat_packing = True

    @override
    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        fill = {
            "input_ids": self.tokenizer.pad_token_id,
            "attention_mask": 0,
            "position_ids": 0,
            "labels": IGNORE_INDEX,
        }
        padded = [
            {name: list(feature[name]) + [value] * (width - len(feature[name])) for name, value in fill.items()}
            for feature in features
        ]
        return super().__call__(padded)


@dataclass
class PackedPairsCollatorWithLogps(_StoredColumnsMixin, _PaddedPackedRows):
    r"""Packed pair rows (:func:`pack_pairs`) in a batch with the block-diagonal attention of ``neat_packing``, plus
    the stored per-token values of each row (``store``, keyed by the packed row)."""

    store: LogpsStore | None = None

    @override
    def row_uids(self, features: list[dict[str, Any]]) -> dict[str, list[int]]:
        return {"": [row_uid(feature) for feature in features]}
