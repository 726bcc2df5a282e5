r"""Cross-tokenizer WSPO data: the weak side of every row, made in the same dataset pass as the strong side.

When the weak models have another tokenizer (or another chat template) than the strong model, each row also carries
the weak model's rendering of the same conversation and, per weak response token, the strong response token that
its shift goes to (:mod:`llamafactory_wspo.projection`). Columns added beside the host's ``input_ids`` and
``labels``:

* ``weak_input_ids``, ``weak_labels``: LLaMA-Factory's own processor output for the weak tokenizer and template,
  never truncated shorter than what the strong side keeps, cut after the last weak token that is scored;
* ``weak_projection``: one entry per weak response token (``weak_labels[1:]`` not ``IGNORE_INDEX``): the index of the
  strong response token (among ``labels[1:]`` not ``IGNORE_INDEX``) that takes its shift, or ``UNMATCHED`` (-1).

How the weak side gets into the host's pass: :func:`weak_side_in_dataset_pass` wraps, for one ``get_dataset`` call,
the host's choice of dataset processor (``llamafactory.data.loader._get_dataset_processor``), so that the processor
that maps each batch of converted rows is :class:`CrossTokenizerDatasetProcessor`: it runs the host's processor for
the strong side and the host's processor for the weak side on the same row, and keeps the row only if both produce
it. Rows that the host drops, splits into train/eval or samples therefore stay aligned, and nothing of the host's
loading, conversion, splitting or caching is copied.

Per labelled turn, both renderings are split into prefix, content and suffix (:func:`render_turn`); the strong
labels of prefix tokens are set to ``IGNORE_INDEX`` (the prefix is never scored), weak tokens whose strong
destination ``cutoff_len`` cut are not scored either (truncated, counted apart from unmatched).
"""

import copy
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from llamafactory.data.processor import DatasetProcessor, PairwiseDatasetProcessor, SupervisedDatasetProcessor
from llamafactory.extras.constants import IGNORE_INDEX

from ..host.dataset_pass import dataset_processor_wrapped
from ..logging import get_logger
from ..projection import (
    NOT_SCORED,
    UNMATCHED,
    WEAK_INPUT_IDS,
    WEAK_LABELS,
    WEAK_PREFIX,
    WEAK_PROJECTION,
    Turn,
    content_byte_ends,
    project_turn,
)
from .splits import dataset_splits, map_splits


if TYPE_CHECKING:
    from llamafactory.data import Template
    from llamafactory.hparams import DataArguments
    from transformers import PreTrainedTokenizer


logger = get_logger(__name__)

# Per-row counts of the data pass, logged once and then removed.
WEAK_TRUNCATED = "weak_truncated"
WEAK_UNMATCHED = "weak_unmatched"
COUNT_COLUMNS = (WEAK_TRUNCATED, WEAK_UNMATCHED)
NO_CUTOFF = 2**40  # the weak side is never truncated shorter than the strong side: it is not truncated at all


@dataclass
class WeakSide:
    r"""The weak models' tokenizer and chat template, when they differ from the strong model's."""

    tokenizer: "PreTrainedTokenizer"
    template: "Template"
    template_name: str
    tokenizer_name: str

    def collators(self, collator_args: dict[str, Any]) -> dict[str, Any]:
        r"""The precompute pass's collators by input prefix: the strong rendering's (``collator_args``) and the
        weak one's, which pads with the weak tokenizer (a strong padding id may be past the weak embedding)."""
        from .collator import SFTDataCollatorWithLogps

        weak_args = {**collator_args, "template": self.template, "tokenizer": self.tokenizer, "processor": None}
        return {"": SFTDataCollatorWithLogps(**collator_args), WEAK_PREFIX: SFTDataCollatorWithLogps(**weak_args)}

    def cache_key(self) -> dict[str, Any]:
        r"""What the weak rendering depends on, for the log-prob cache key: the template and the whole tokenizer."""
        backend = self.tokenizer.backend_tokenizer.to_str()
        digest = hashlib.sha256(backend.encode("utf-8"))
        digest.update(json.dumps(self.tokenizer.special_tokens_map, sort_keys=True, default=str).encode("utf-8"))
        return {"weak_template": self.template_name, "weak_tokenizer": digest.hexdigest()}


class RenderedTurn(NamedTuple):
    r"""A labelled assistant turn as one side labels it: its token ids and their split (:class:`Turn`)."""

    ids: list[int]
    layout: Turn


def _end_of_turn(suffix_ids: Sequence[int], stop_ids: set[int]) -> int:
    r"""The suffix token that takes the surplus: the first stop token (EOS or a stop word), else the last token."""
    return next((i for i, token in enumerate(suffix_ids) if token in stop_ids), max(len(suffix_ids) - 1, 0))


def render_turn(template: "Template", tokenizer: "PreTrainedTokenizer", content: str, target_ids: list[int]) -> Turn:
    r"""Split ``target_ids``, the template's labelled ids of an assistant message with ``content``, by position.

    The template's assistant formatter renders ``content`` in one of its string slots; that slot is tokenized with
    offsets and its tokens split: *prefix* (lying before the content), *content* (up to the last token that starts
    inside the content, so a token straddling content and suffix is content), *suffix* (the rest). Slots before
    it are prefix, slots after it suffix; ids that the template puts before the formatted message (e.g. the empty
    thought of a reasoning template) are prefix. Raises ``ValueError`` if the formatter's tokens are not the tail
    of ``target_ids`` (a template that changes the content, such as one that removes thoughts).
    """
    slots = template.format_assistant.slots
    elements = template.format_assistant.apply(content=content)
    slot_index = next((i for i, slot in enumerate(slots) if isinstance(slot, str) and "{{content}}" in slot), None)
    if slot_index is None:
        raise ValueError("the template's assistant formatter has no `{{content}}` slot")

    before: list[int] = template._convert_elements_to_ids(tokenizer, elements[:slot_index])
    after: list[int] = template._convert_elements_to_ids(tokenizer, elements[slot_index + 1 :])
    text = elements[slot_index]
    start = slots[slot_index].index("{{content}}")
    end = start + len(content)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) if text else None
    ids = list(encoded["input_ids"]) if encoded else []
    offsets = [tuple(offset) for offset in encoded["offset_mapping"]] if encoded else []
    if ids != template._convert_elements_to_ids(tokenizer, [text]):
        raise ValueError("the tokenizer's offsets do not describe the ids it encodes")

    # prefix: tokens lying before the content; content: up to the last token starting inside it; suffix: the rest
    num_prefix = 0
    while num_prefix < len(ids) and offsets[num_prefix][0] < start and offsets[num_prefix][1] <= start:
        num_prefix += 1
    num_content = num_prefix
    while num_content < len(ids) and offsets[num_content][0] < end:
        num_content += 1
    content_ends = content_byte_ends(content, [offset[1] - start for offset in offsets[num_prefix:num_content]])

    rendered = before + ids + after
    extra = len(target_ids) - len(rendered)
    if extra < 0 or list(target_ids[extra:]) != rendered:
        raise ValueError("the labelled ids of the turn do not end with the template's rendering of its content")

    suffix_ids = ids[num_content:] + after
    stop_ids = set(template.get_stop_token_ids(tokenizer))
    if template.efficient_eos:  # the processor appends EOS after the turn
        suffix_ids = suffix_ids + [tokenizer.eos_token_id]

    return Turn(
        prefix=extra + len(before) + num_prefix,
        content_ends=content_ends,
        suffix=len(suffix_ids),
        end_of_turn=_end_of_turn(suffix_ids, stop_ids),
    )


def labelled_runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    r"""``(start, end)`` of each maximal run of labelled positions (not ``IGNORE_INDEX``), in order."""
    runs, start = [], None
    for position, label in enumerate(labels):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, position))
            start = None

    if start is not None:
        runs.append((start, len(labels)))

    return runs


def kept_positions(run: Sequence[int], turn_ids: Sequence[int], eos_id: int | None) -> list[int] | None:
    r"""Which tokens of a turn (indices into ``turn_ids``) a labelled ``run`` holds; ``None``: not that turn.

    ``cutoff_len`` keeps the beginning of a turn: ``run == turn_ids[:n]``. With an ``efficient_eos`` template
    (``eos_id``) the processor adds the EOS after the turn even when it cut the turn: ``run`` is then
    ``turn_ids[:n - 1]`` followed by the EOS that closes ``turn_ids``.
    """
    run, turn_ids = list(run), list(turn_ids)
    if 0 < len(run) <= len(turn_ids) and run == turn_ids[: len(run)]:
        return list(range(len(run)))

    if eos_id is not None and run and run[-1] == eos_id and len(run) <= len(turn_ids) and turn_ids[-1] == eos_id:
        if run[:-1] == turn_ids[: len(run) - 1]:
            return list(range(len(run) - 1)) + [len(turn_ids) - 1]

    return None


class AlignedRow(NamedTuple):
    r"""The strong labels (prefix tokens no longer labelled) and the weak columns of one row, with its counts."""

    labels: list[int]
    weak_input_ids: list[int]
    weak_labels: list[int]
    weak_projection: list[int]
    truncated: int
    unmatched: int


def _response_index(labels: Sequence[int]) -> dict[int, int]:
    r"""Position -> index among the response positions (``labels[1:]`` not ``IGNORE_INDEX``)."""
    positions = [position for position in range(1, len(labels)) if labels[position] != IGNORE_INDEX]
    return {position: index for index, position in enumerate(positions)}


def align_row(
    labels: Sequence[int],
    strong_turns: Sequence[RenderedTurn],
    weak_input_ids: Sequence[int],
    weak_labels: Sequence[int],
    weak_turns: Sequence[RenderedTurn],
    strong_eos: int | None = None,
) -> AlignedRow | None:
    r"""The weak side of one row, from both sides' labels and the renderings of its labelled turns.

    The labelled runs of ``labels`` are the turns' kept tokens, in order (:func:`kept_positions`); the weak side
    (never truncated) holds every turn whole. Each weak token's destination comes from the full renderings
    (:func:`project_turn`); a weak token whose destination ``cutoff_len`` cut is truncated (not scored, counted),
    a prefix token is not scored, and the weak sequence ends after its last scored token. ``None`` if the labels
    do not match the renderings (the row is then dropped).
    """
    strong_runs, weak_runs = labelled_runs(labels), labelled_runs(weak_labels)
    if (
        not weak_runs
        or len(strong_runs) > len(weak_runs)
        or not len(weak_runs) == len(weak_turns) == len(strong_turns)
    ):
        return None

    weak_positions: list[range] = []
    for (start, end), turn in zip(weak_runs, weak_turns):
        if list(weak_labels[start:end]) != turn.ids or len(turn.ids) != turn.layout.num_tokens or start == 0:
            return None
        weak_positions.append(range(start, end))

    strong_labels = list(labels)
    strong_positions: list[dict[int, int]] = []  # per turn: turn index -> position in the row
    for k, turn in enumerate(strong_turns):
        if len(turn.ids) != turn.layout.num_tokens:
            return None
        if k >= len(strong_runs):
            strong_positions.append({})
            continue
        start, end = strong_runs[k]
        kept = kept_positions(labels[start:end], turn.ids, strong_eos)
        if kept is None or start == 0:
            return None
        strong_positions.append({index: start + i for i, index in enumerate(kept)})
        for index in range(turn.layout.prefix):  # the prefix is never scored
            if index in strong_positions[-1]:
                strong_labels[strong_positions[-1][index]] = IGNORE_INDEX

    response_index = _response_index(strong_labels)
    out_labels = list(weak_labels)
    projection, truncated, unmatched, last = [], 0, 0, 0
    for k, (weak, strong) in enumerate(zip(weak_turns, strong_turns)):
        for index, dest in enumerate(project_turn(weak.layout, strong.layout)):
            position = weak_positions[k][index]
            if dest == NOT_SCORED:
                out_labels[position] = IGNORE_INDEX
            elif dest == UNMATCHED:
                projection.append(UNMATCHED)
                unmatched += 1
                last = position
            elif dest in strong_positions[k]:
                projection.append(response_index[strong_positions[k][dest]])
                last = position
            else:  # cutoff_len cut the strong token it goes to
                out_labels[position] = IGNORE_INDEX
                truncated += 1

    keep = last + 1 if projection else max(weak_runs[0][0], 1)
    return AlignedRow(strong_labels, list(weak_input_ids[:keep]), out_labels[:keep], projection, truncated, unmatched)


def _turn_targets(proc: DatasetProcessor, messages: list[dict[str, str]], system, tools) -> list[list[int]]:
    r"""The labelled ids of each assistant message, as the host's processor encodes them."""
    if isinstance(proc, PairwiseDatasetProcessor):
        return [proc.template.encode_oneturn(proc.tokenizer, messages, system, tools)[1]]

    discarding = proc.data_args.mask_history and not proc.template.preserve_thinking
    pairs = proc.template.encode_multiturn(proc.tokenizer, messages, system, tools, discarding)
    return [target for _, target in pairs]


def _render_turns(proc: DatasetProcessor, messages: list[dict[str, str]], system, tools) -> list[RenderedTurn]:
    targets = _turn_targets(proc, messages, system, tools)
    contents = [message["content"] for message in messages[1::2]]
    if isinstance(proc, PairwiseDatasetProcessor):
        contents = contents[-1:]

    turns = []
    eos = [proc.tokenizer.eos_token_id] if proc.template.efficient_eos else []
    for content, target in zip(contents, targets, strict=True):
        turns.append(RenderedTurn(list(target) + eos, render_turn(proc.template, proc.tokenizer, content, target)))

    return turns


@dataclass
class CrossTokenizerDatasetProcessor(DatasetProcessor):
    r"""The host's processor for the strong side and the host's processor for the weak side, row by row.

    ``template``, ``tokenizer``, ``processor`` and ``data_args`` are the strong side's (as the host passes them);
    ``strong`` and ``weak`` are the host's processors built for each side. A row is kept only if both produce it
    and :func:`align_row` matches the renderings; for pairwise data both responses get their weak columns
    (``chosen_weak_input_ids``, ...).
    """

    strong: DatasetProcessor | None = None
    weak: DatasetProcessor | None = None

    def __post_init__(self) -> None:
        for proc in (self.strong, self.weak):
            if type(proc) not in (SupervisedDatasetProcessor, PairwiseDatasetProcessor):
                raise ValueError(
                    f"Cross-tokenizer WSPO cannot use LLaMA-Factory's {type(proc).__name__}: only plain (not packed) "
                    "SFT-format and pairwise data are supported."
                )

    @property
    def pairwise(self) -> bool:
        return isinstance(self.strong, PairwiseDatasetProcessor)

    def _row(self, examples: dict[str, list[Any]], i: int) -> dict[str, list[Any]] | None:
        one = {key: values[i : i + 1] for key, values in examples.items()}
        strong, weak = self.strong.preprocess_dataset(one), self.weak.preprocess_dataset(one)
        sides = ("chosen_", "rejected_") if self.pairwise else ("",)
        if not strong.get(f"{sides[0]}input_ids") or not weak.get(f"{sides[0]}input_ids"):
            return None  # the host dropped it (on either side)

        prompt, response = examples["_prompt"][i], examples["_response"][i]
        system, tools = examples["_system"][i], examples["_tools"][i]
        media = [examples[key][i] or [] for key in ("_images", "_videos", "_audios") if key in examples]
        row = {key: values[0] for key, values in strong.items()}
        strong_eos = self.strong.tokenizer.eos_token_id if self.strong.template.efficient_eos else None
        for side, prefix in enumerate(sides):
            messages = prompt + ([response[side]] if self.pairwise else response)
            try:
                turns = [
                    _render_turns(proc, proc.template.mm_plugin.process_messages(messages, *media, proc.processor),
                                  system, tools)
                    for proc in (self.strong, self.weak)
                ]  # fmt: skip
            except ValueError as err:
                logger.warning_rank0(f"Dropped an example whose turns cannot be split by the templates ({err}).")
                return None

            aligned = align_row(
                strong[f"{prefix}labels"][0],
                turns[0],
                weak[f"{prefix}input_ids"][0],
                weak[f"{prefix}labels"][0],
                turns[1],
                strong_eos,
            )
            if aligned is None:
                logger.warning_rank0("Dropped an example whose labels do not match the templates' renderings.")
                return None

            row[f"{prefix}labels"] = aligned.labels
            row[f"{prefix}{WEAK_INPUT_IDS}"] = aligned.weak_input_ids
            row[f"{prefix}{WEAK_LABELS}"] = aligned.weak_labels
            row[f"{prefix}{WEAK_PROJECTION}"] = aligned.weak_projection
            row[f"{prefix}{WEAK_TRUNCATED}"] = aligned.truncated
            row[f"{prefix}{WEAK_UNMATCHED}"] = aligned.unmatched

        return row

    def preprocess_dataset(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        model_inputs = defaultdict(list)
        for i in range(len(examples["_prompt"])):
            row = self._row(examples, i)
            if row is not None:
                for key, value in row.items():
                    model_inputs[key].append(value)

        return model_inputs

    def print_data_example(self, example: dict[str, list[int]]) -> None:
        self.strong.print_data_example(example)
        prefix = "chosen_" if self.pairwise else ""
        weak_ids = example[f"{prefix}{WEAK_INPUT_IDS}"]
        print(f"{prefix}{WEAK_INPUT_IDS} (weak tokenizer):\n{weak_ids}")
        print(f"weak inputs:\n{self.weak.tokenizer.decode(weak_ids, skip_special_tokens=False)}")
        print(f"{prefix}{WEAK_PROJECTION}:\n{example[f'{prefix}{WEAK_PROJECTION}']}")


def weak_data_args(data_args: "DataArguments", weak_side: WeakSide) -> "DataArguments":
    r"""The data arguments of the weak side: the weak template, and no truncation (see :func:`align_row`)."""
    args = copy.copy(data_args)
    args.template = weak_side.template_name
    args.cutoff_len = NO_CUTOFF
    return args


def weak_side_in_dataset_pass(weak_side: WeakSide, data_args: "DataArguments") -> AbstractContextManager[None]:
    r"""Within this block, LLaMA-Factory's ``get_dataset`` maps rows with :class:`CrossTokenizerDatasetProcessor`
    (:func:`~llamafactory_wspo.host.dataset_pass.dataset_processor_wrapped`): the host's processor for the strong side
    and the host's processor, with the weak tokenizer and template, for the weak side."""
    weak_args = weak_data_args(data_args, weak_side)

    def wrap(original, data_args, stage, template, tokenizer, processor, do_generate):
        strong = original(data_args, stage, template, tokenizer, processor, do_generate)
        weak = original(weak_args, stage, weak_side.template, weak_side.tokenizer, None, do_generate)
        return CrossTokenizerDatasetProcessor(
            template=template, tokenizer=tokenizer, processor=processor, data_args=data_args, strong=strong, weak=weak
        )

    return dataset_processor_wrapped(wrap)


def report_weak_side(dataset_module: dict[str, Any], cutoff_len: int) -> dict[str, Any]:
    r"""Log how many weak response tokens are unmatched and how many ``cutoff_len`` truncated, then drop the counts.

    A data set that lacks the weak columns (loaded from a ``tokenized_path`` saved by a run that was not
    cross-tokenizer) is an error.
    """
    totals = dict.fromkeys(COUNT_COLUMNS, 0)
    rows = 0
    for split in dataset_splits(dataset_module):
        missing = [name for name in (*COUNT_COLUMNS, WEAK_INPUT_IDS) if name not in split.column_names]
        if missing:
            raise ValueError(
                f"The tokenized data set has no weak side ({', '.join(missing)} missing): a run that was not "
                "cross-tokenizer WSPO saved it. Remove `tokenized_path` or point it at a new directory."
            )
        for name in COUNT_COLUMNS:
            totals[name] += sum(split[name])
        rows += len(split)

    logger.info_rank0(
        f"Cross-tokenizer WSPO: {totals[WEAK_UNMATCHED]} weak response tokens of {rows} examples end after the last "
        "strong token of their turn (unmatched, see `wspo/projection_unmatched`); "
        f"{totals[WEAK_TRUNCATED]} go to strong tokens that `cutoff_len: {cutoff_len}` cut (truncated, not scored)."
    )
    return map_splits(lambda split: split.remove_columns(list(COUNT_COLUMNS)), dataset_module)
