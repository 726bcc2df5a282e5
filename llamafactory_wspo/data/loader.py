"""WSPO data: LLaMA-Factory's own loading and templates, SFT-format or pairwise data sets."""

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from llamafactory.data import get_dataset
from llamafactory.data.parser import get_dataset_list
from llamafactory.extras.constants import IGNORE_INDEX

from ..hub import offline_data_sets
from ..logging import get_logger
from ..logps.store import KL_PREFIX
from ..projection import WEAK_INPUT_IDS
from .packed import pack_rows
from .splits import dataset_splits, map_splits
from .weak_side import report_weak_side, weak_side_in_dataset_pass


logger = get_logger(__name__)


if TYPE_CHECKING:
    from datasets import Dataset
    from llamafactory.data import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    from ..hparams import WSPOArguments
    from .weak_side import WeakSide


_PAIR_COLUMNS = ("input_ids", "attention_mask", "labels")


def _scored(labels: list[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels[1:])  # labels[0] is never predicted


def drop_unscored(dataset_module: dict[str, Any], label_columns: Sequence[str], cutoff_len: int) -> dict[str, Any]:
    r"""Drop the examples that ``cutoff_len`` left without a response token in any of ``label_columns``.

    Such an example has nothing to score: it would add a loss of 0 (WSPO) or ln 2 with no gradient (WPO) and
    dilute the batch. The count is logged; a split left empty is an error naming ``cutoff_len``.
    """

    def drop(dataset: "Dataset") -> "Dataset":
        kept = dataset.filter(
            lambda batch: [
                all(_scored(labels) for labels in row) for row in zip(*(batch[col] for col in label_columns))
            ],
            batched=True,
            desc="Dropping examples without response tokens",
        )
        dropped = len(dataset) - len(kept)
        if dropped:
            logger.warning_rank0(
                f"Dropped {dropped} of {len(dataset)} examples: `cutoff_len: {cutoff_len}` left no response token in "
                "them."
            )

        if len(kept) == 0:
            raise ValueError(
                f"`cutoff_len: {cutoff_len}` leaves no response token in any of the {len(dataset)} examples: the "
                "prompts fill the whole length. Raise `cutoff_len`, or use shorter prompts."
            )

        return kept

    return map_splits(drop, dataset_module)


def max_token_id(dataset_module: dict[str, Any], weak: bool = False) -> int:
    r"""The largest token id in any ``*input_ids`` column of the training and evaluation sets: the strong side's,
    or with ``weak`` the weak rendering's (``weak_input_ids`` of cross-tokenizer WSPO)."""
    import pyarrow.compute as pc

    largest = -1
    for dataset in dataset_splits(dataset_module):
        columns = [name for name in dataset.column_names if name.endswith("input_ids")]
        for column in (name for name in columns if name.endswith(WEAK_INPUT_IDS) == weak):
            for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=4096):
                value = pc.max(pc.list_flatten(batch[column])).as_py()
                largest = max(largest, -1 if value is None else value)

    return largest


def select_responses(dataset: "Dataset", choice: str) -> "Dataset":
    r"""Turn LLaMA-Factory's pairwise columns into SFT columns holding the chosen, rejected or both responses.

    Every ``chosen_<name>`` column (``input_ids``, ``attention_mask``, ``labels``, and the weak side's columns of
    cross-tokenizer WSPO) becomes ``<name>``; the other columns are repeated for each selected response.
    """
    sides = ("chosen", "rejected") if choice == "both" else (choice,)
    extra = [name for name in dataset.column_names if not name.startswith(("chosen_", "rejected_"))]
    per_side = [name.removeprefix("chosen_") for name in dataset.column_names if name.startswith("chosen_")]

    def select(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in (*per_side, *extra)}
        for i in range(len(batch["chosen_input_ids"])):
            for side in sides:
                for name in per_side:
                    out[name].append(batch[f"{side}_{name}"][i])

                for name in extra:
                    out[name].append(batch[name][i])

        return out

    return dataset.map(select, batched=True, remove_columns=dataset.column_names, desc=f"Selecting {choice} responses")


def kto_rows(dataset: "Dataset") -> "Dataset":
    r"""Every sequence that a KTO batch scores, target and KL alike, as (prompt, response) rows."""

    def split(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in _PAIR_COLUMNS}
        for prefix in ("", KL_PREFIX):
            for name in _PAIR_COLUMNS:
                out[name].extend(batch[f"{prefix}{name}"])

        return out

    return dataset.map(split, batched=True, remove_columns=dataset.column_names, desc="Collecting KTO rows")


def get_wspo_dataset(
    template: "Template",
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "WSPOArguments",
    pairwise: bool,
    weak_side: "WeakSide | None" = None,
    **tokenizer_module,
) -> dict[str, Any]:
    r"""Load, template and tokenize through LLaMA-Factory; pairwise sets become (prompt, response) examples.

    With ``weak_side`` (cross-tokenizer WSPO) each row also gets the weak rendering, made in the same pass
    (:mod:`llamafactory_wspo.data.weak_side`).
    """
    dataset_names = (data_args.dataset or []) + (data_args.eval_dataset or [])
    names = ", ".join(dataset_names)
    response_columns = {
        column
        for attr in get_dataset_list(dataset_names, data_args.dataset_dir)
        for column in (attr.response, attr.messages, attr.chosen, attr.rejected)
        if column
    }
    try:
        with offline_data_sets(), weak_side_in_dataset_pass(weak_side, data_args) if weak_side else nullcontext():
            dataset_module = get_dataset(
                template, model_args, data_args, training_args, stage="rm" if pairwise else "sft", **tokenizer_module
            )
    except RuntimeError as err:  # every example was dropped for lack of a response
        if "Cannot find valid samples" in str(err):
            raise ValueError(_no_response_message(names)) from err

        raise
    except KeyError as err:  # the response column is missing from the data files
        if err.args and err.args[0] in response_columns:
            raise ValueError(_no_response_message(names)) from err

        raise

    if pairwise:
        dataset_module = map_splits(
            lambda split: select_responses(split, finetuning_args.wspo_response), dataset_module
        )

    if weak_side is not None:
        dataset_module = report_weak_side(dataset_module, data_args.cutoff_len)

    dataset_module = drop_unscored(dataset_module, ("labels",), data_args.cutoff_len)
    if pairwise and data_args.packing:  # the host packs SFT-format data itself, but not a pairwise set's responses
        pad_token_id = tokenizer_module["tokenizer"].pad_token_id
        dataset_module = map_splits(
            lambda split: pack_rows(
                split, data_args.cutoff_len, data_args.neat_packing, pad_token_id, data_args.preprocessing_batch_size
            ),
            dataset_module,
        )

    return dataset_module


def _no_response_message(names: str) -> str:
    return (
        f"`dataset` {names} has no responses to train on: WSPO needs (prompt, response) examples, e.g. alpaca "
        "`instruction`/`output` or sharegpt conversations ending with an assistant turn, or a pairwise data set."
    )
