r"""Cross-tokenizer WSPO: the weak model's per-token shift moved onto the strong model's tokens.

This module defines the rule, as small pure functions with no tokenizer, template or model
(``docs/cross_tokenizer.md`` explains it to users and says what it can promise). What does not depend on tokenisation is the log-ratio of a
text, ``sum_j w_j`` over the weak tokens ``j`` of a labelled turn; the projection moves each ``w_j`` onto one strong
token (or reports it as unmatched), so that per turn

    sum_t w~_t + unmatched = sum_j w_j.

A labelled turn, on either side, is the template's *prefix* (never scored), the message *content* and the
template's *suffix* (end-of-turn tokens such as ``<|im_end|>\n`` or ``<|eot_id|>``); a token that straddles content
and suffix belongs to the content (see :class:`Turn`).

* **Content**, in UTF-8 byte offsets of the content (a byte-level piece may cover part of a character): weak content
  token ``j`` ends at byte ``b_j``, strong content token ``t`` at ``d_t``. With the running maximum of the strong
  ends ``E_t = max_{s <= t} d_s``, each weak token goes to the first strong token with ``E_t >= b_j``; when several
  weak tokens and several strong tokens share one end they are paired in order (k-th to k-th, the surplus weak ones
  to the last of the strong group); a weak token that ends after the last strong end is unmatched
  (:func:`project_content`).
* **Suffix**: the weak suffix tokens go to the strong suffix tokens in order, any surplus to the strong end-of-turn
  token (:func:`project_suffix`).
* **Prefix**: not scored on either side (:data:`NOT_SCORED`).

Destinations are indices into the strong turn (prefix, content, suffix in order, :func:`project_turn`); values are
moved by :func:`project_values` (exact Python floats, for checks) or :func:`project_shift` (tensors, in training and
in the precompute pass).
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch


UNMATCHED = -1  # a weak token that ends after the last strong end: its shift is reported, not moved
NOT_SCORED = -2  # a weak prefix token: not scored on either side
PADDING = -3  # a padded entry of a batch's projection column

# The weak side of a row (see ``llamafactory_wspo.data.weak_side``): the weak rendering and, per weak response token,
# the index of the strong response token that takes its shift (or UNMATCHED).
WEAK_PREFIX = "weak_"
WEAK_INPUT_IDS = f"{WEAK_PREFIX}input_ids"
WEAK_ATTENTION_MASK = f"{WEAK_PREFIX}attention_mask"
WEAK_LABELS = f"{WEAK_PREFIX}labels"
WEAK_PROJECTION = f"{WEAK_PREFIX}projection"
WEAK_COLUMNS = (WEAK_INPUT_IDS, WEAK_LABELS, WEAK_PROJECTION)
# Per strong response token, what the ``wspo/projection_unmatched`` metric needs (see :class:`ProjectedShift`).
WEAK_ABS = "weak_abs_shift"
UNMATCHED_ABS = "weak_unmatched_abs"


class Turn(NamedTuple):
    r"""One labelled assistant turn as one tokenizer and template render it, split by position.

    ``prefix`` tokens come first, then one token per entry of ``content_ends``, then ``suffix`` tokens.
    ``content_ends[i]`` is the UTF-8 byte offset, within the message content, at which content token ``i`` ends
    (clamped to the content, so a token straddling content and suffix ends at the content's last byte).
    ``end_of_turn`` is the suffix index of the end-of-turn token that takes the surplus of weak suffix tokens.
    """

    prefix: int
    content_ends: tuple[int, ...]
    suffix: int
    end_of_turn: int

    @property
    def num_tokens(self) -> int:
        return self.prefix + len(self.content_ends) + self.suffix


def utf8_offsets(text: str) -> list[int]:
    r"""``out[i]`` is the UTF-8 byte offset of character offset ``i`` of ``text`` (``i`` from 0 to ``len(text)``)."""
    out = [0]
    for char in text:
        out.append(out[-1] + len(char.encode("utf-8", "surrogatepass")))
    return out


def content_byte_ends(text: str, char_ends: Sequence[int]) -> tuple[int, ...]:
    r"""Byte ends within ``text`` of tokens ending at character offsets ``char_ends`` (relative to ``text``).

    Offsets outside ``text`` are clamped to it: a token that runs into the suffix ends at the content's last byte,
    one that ends in the prefix ends at byte 0.
    """
    offsets = utf8_offsets(text)
    return tuple(offsets[min(max(end, 0), len(text))] for end in char_ends)


def running_max(values: Sequence[int]) -> list[int]:
    r"""``out[t] = max(values[:t + 1])``."""
    out: list[int] = []
    for value in values:
        out.append(value if not out or value > out[-1] else out[-1])
    return out


def project_content(weak_ends: Sequence[int], strong_ends: Sequence[int]) -> list[int]:
    r"""The strong content token that each weak content token's shift goes to, or :data:`UNMATCHED`.

    Rule: with ``E_t = max_{s <= t} d_s``, weak token ``j`` goes to the first strong
    token with ``E_t >= b_j``. When ``k`` weak tokens end exactly where a group of strong tokens with one ``E``
    ends, the i-th of them goes to the i-th of the group and the surplus to the group's last token. A weak token
    with ``b_j`` greater than the last ``E`` is unmatched.

    The weak ends are read as their running maximum as well: on a monotone offset map this changes nothing, and
    where a map goes back (an end below an earlier one) it keeps the weak tokens in order, so that the same
    tokenizer on both sides maps every token to itself.
    """
    ends = running_max(strong_ends)
    group_last = list(range(len(ends)))  # the last strong token sharing E_t with token t
    for t in range(len(ends) - 2, -1, -1):
        if ends[t] == ends[t + 1]:
            group_last[t] = group_last[t + 1]

    out: list[int] = []
    t = 0
    tie_end, tied = None, 0  # the end of the current tie and how many weak tokens it has taken
    for end in running_max(weak_ends):
        while t < len(ends) and ends[t] < end:
            t += 1

        if t == len(ends):
            out.append(UNMATCHED)
        elif ends[t] == end:  # a tie: pair in order, the surplus to the last of the strong group
            if end != tie_end:
                tie_end, tied = end, 0
            out.append(min(t + tied, group_last[t]))
            tied += 1
        else:
            out.append(t)

    return out


def project_suffix(num_weak: int, num_strong: int, end_of_turn: int) -> list[int]:
    r"""Weak suffix token ``k`` goes to strong suffix token ``k``; the surplus to the strong ``end_of_turn`` token.

    Without any strong suffix token, every weak suffix token is :data:`UNMATCHED`.
    """
    if num_strong == 0:
        return [UNMATCHED] * num_weak

    if not 0 <= end_of_turn < num_strong:
        raise ValueError(f"end_of_turn {end_of_turn} is not one of the {num_strong} suffix tokens.")

    return [k if k < num_strong else end_of_turn for k in range(num_weak)]


def project_turn(weak: Turn, strong: Turn) -> list[int]:
    r"""For each token of the weak turn, its destination as an index into the strong turn.

    Weak prefix tokens are :data:`NOT_SCORED`; content and suffix tokens follow :func:`project_content` and
    :func:`project_suffix`, or are :data:`UNMATCHED`.
    """
    content = [
        dest if dest == UNMATCHED else strong.prefix + dest
        for dest in project_content(weak.content_ends, strong.content_ends)
    ]
    suffix_start = strong.prefix + len(strong.content_ends)
    suffix = [
        dest if dest == UNMATCHED else suffix_start + dest
        for dest in project_suffix(weak.suffix, strong.suffix, strong.end_of_turn)
    ]
    return [NOT_SCORED] * weak.prefix + content + suffix


def project_values(values: Sequence[float], destinations: Sequence[int], size: int) -> tuple[list[float], float]:
    r"""``(w~, unmatched)``: ``w~[t] = sum(values[j] for j with destinations[j] == t)``, ``unmatched`` the sum of
    the values sent to :data:`UNMATCHED`; values sent to :data:`NOT_SCORED` (or any other negative code) are dropped.

    Python floats, summed in order: with values that add exactly (e.g. multiples of a power of two) the sum property
    ``sum(w~) + unmatched == sum of the moved values`` holds bit for bit.
    """
    if len(values) != len(destinations):
        raise ValueError(f"{len(values)} values but {len(destinations)} destinations.")

    projected, unmatched = [0.0] * size, 0.0
    for value, dest in zip(values, destinations):
        if dest >= 0:
            projected[dest] += value
        elif dest == UNMATCHED:
            unmatched += value

    return projected, unmatched


class ProjectedShift(NamedTuple):
    r"""The weak shift of one row on the strong response tokens, and what the ``projection_unmatched`` metric needs.

    ``shift[t] = w~_t``; ``weak_abs[t] = sum |w_j|`` over the weak tokens sent to ``t``; ``unmatched_abs`` is
    ``sum |w_j|`` over the unmatched weak tokens, put on the row's last strong token (zeros elsewhere), so that a
    row's ``weak_abs.sum() + unmatched_abs.sum()`` is ``sum_j |w_j|`` and the values can be stored per token.
    """

    shift: torch.Tensor
    weak_abs: torch.Tensor
    unmatched_abs: torch.Tensor


def project_shift(weak_shift: torch.Tensor, destinations: torch.Tensor, size: int) -> ProjectedShift:
    r""":func:`project_values` on tensors for one row: ``weak_shift`` and ``destinations`` have one entry per weak
    response token, the result one per strong response token (``size``), in ``weak_shift``'s dtype."""
    if weak_shift.shape != destinations.shape:
        raise ValueError(f"weak shift {tuple(weak_shift.shape)} and destinations {tuple(destinations.shape)} differ.")

    destinations = destinations.to(weak_shift.device)
    moved = destinations >= 0
    index = destinations[moved].long()
    if index.numel() and int(index.max()) >= size:
        raise ValueError(f"a destination ({int(index.max())}) is past the {size} strong response tokens.")

    shift = weak_shift.new_zeros(size).index_add_(0, index, weak_shift[moved])
    weak_abs = weak_shift.new_zeros(size).index_add_(0, index, weak_shift[moved].abs())
    unmatched_abs = weak_shift.new_zeros(size)
    if size:
        unmatched_abs[-1] = weak_shift[destinations == UNMATCHED].abs().sum()

    return ProjectedShift(shift, weak_abs, unmatched_abs)


def project_batch(
    weak_shift: torch.Tensor, weak_mask: torch.Tensor, projection: torch.Tensor, strong_mask: torch.Tensor
) -> ProjectedShift:
    r""":func:`project_shift` for each row of a padded batch, laid out on the strong response positions.

    ``weak_shift`` and ``weak_mask`` are ``(batch, weak length - 1)``; row ``b`` of ``projection`` starts with one
    destination per weak response token of that row (then padding); the result's tensors are ``strong_mask``'s
    shape, zero outside its response positions.
    """
    out = [torch.zeros(strong_mask.shape, dtype=weak_shift.dtype, device=weak_shift.device) for _ in range(3)]
    for row in range(strong_mask.size(0)):
        values = weak_shift[row][weak_mask[row]]
        projected = project_shift(values, projection[row][: values.numel()], int(strong_mask[row].sum()))
        for column, value in zip(out, projected):
            column[row][strong_mask[row]] = value

    return ProjectedShift(*out)


def unmatched_fraction(weak_abs: torch.Tensor, unmatched_abs: torch.Tensor) -> float:
    r"""``wspo/projection_unmatched``: ``sum |unmatched w_j| / sum |w_j|`` over everything given (0 when all is 0)."""
    unmatched = float(unmatched_abs.double().sum())
    total = float(weak_abs.double().sum()) + unmatched
    return unmatched / total if total > 0 else 0.0
