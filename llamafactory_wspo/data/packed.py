"""Packed rows for WSPO examples that LLaMA-Factory's packed SFT processing cannot build: those of a pairwise data set.

SFT-format data packs through the host's own ``PackedSupervisedDatasetProcessor`` (``packing: true`` with stage
``sft``). A pairwise data set is tokenized by the host's pairwise processing, which ignores ``packing``; once
:func:`~llamafactory_wspo.data.loader.select_responses` has made (prompt, response) rows of it, :func:`pack_rows`
packs them the way the host packs SFT rows: greedy knapsack up to ``cutoff_len``, rows padded to ``cutoff_len + 1``,
``position_ids`` restarting at 0 per example, and with ``neat_packing`` an ``attention_mask`` that numbers the
examples 1, 2, ... (0 on padding) so that each attends only to itself.
"""

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from llamafactory.data.processor.processor_utils import greedy_knapsack

from ..losses import IGNORE_INDEX


if TYPE_CHECKING:
    from datasets import Dataset


_MEDIA = ("images", "videos", "audios")


def pack_batch(batch: dict[str, list[Any]], cutoff_len: int, neat: bool, pad_token_id: int) -> dict[str, list[Any]]:
    r"""Pack the (prompt, response) rows of one ``datasets`` batch (``input_ids`` and ``labels``, each at most
    ``cutoff_len`` long) into rows of ``cutoff_len + 1`` tokens, as LLaMA-Factory packs SFT rows."""
    lengths = [len(ids) for ids in batch["input_ids"]]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, length in enumerate(lengths):
        by_length[length].append(index)

    media = [name for name in _MEDIA if name in batch]
    out: dict[str, list[Any]] = defaultdict(list)
    for knapsack in greedy_knapsack(list(lengths), cutoff_len):
        input_ids, attention_mask, position_ids, labels = [], [], [], []
        packed_media: dict[str, list[Any]] = {name: [] for name in media}
        for number, length in enumerate(knapsack, start=1):
            index = by_length[length].pop()
            input_ids += batch["input_ids"][index]
            labels += batch["labels"][index]
            position_ids += list(range(length))
            attention_mask += [number if neat else 1] * length
            for name in media:
                packed_media[name] += batch[name][index] or []

        pad = cutoff_len + 1 - len(input_ids)
        input_ids += [pad_token_id] * pad
        labels += [IGNORE_INDEX] * pad
        position_ids += [0] * pad
        attention_mask += [0 if neat else 1] * pad
        for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            out[name].append(value)
        out["position_ids"].append(position_ids)
        out["labels"].append(labels)
        for name in media:
            out[name].append(packed_media[name] or None)

    return dict(out)


def pack_rows(dataset: "Dataset", cutoff_len: int, neat: bool, pad_token_id: int, batch_size: int = 1000) -> "Dataset":
    r"""Pack the rows of ``dataset`` (see :func:`pack_batch`), ``batch_size`` rows at a time as the host does
    (``preprocessing_batch_size``). The host's pairwise processing has cut each row to ``cutoff_len`` already."""
    columns = ["input_ids", "labels", *(name for name in _MEDIA if name in dataset.column_names)]
    return dataset.map(
        pack_batch,
        batched=True,
        batch_size=batch_size,
        fn_kwargs={"cutoff_len": cutoff_len, "neat": neat, "pad_token_id": pad_token_id},
        remove_columns=dataset.column_names,
        desc="Packing (prompt, response) rows",
    ).select_columns(["input_ids", "attention_mask", "position_ids", "labels", *columns[2:]])
