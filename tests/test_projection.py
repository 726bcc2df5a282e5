"""The cross-tokenizer projection rule (llamafactory_wspo/projection.py), on hand-made offset maps and on real
tokenizers of three kinds built offline (byte-level BPE, SentencePiece-style BPE with byte fallback, word-level).

Values are multiples of 2**-10, so every sum in float64 is exact and the sum property is checked bit for bit.
"""

import itertools
import random

import pytest
import torch
from helpers.tiny_tokenizers import KINDS, build_tokenizer, random_text, random_texts

from llamafactory_wspo.projection import (
    NOT_SCORED,
    UNMATCHED,
    Turn,
    content_byte_ends,
    project_content,
    project_shift,
    project_suffix,
    project_turn,
    project_values,
    running_max,
    unmatched_fraction,
    utf8_offsets,
)


NUM_TEXTS = 150


@pytest.fixture(scope="module")
def tokenizers():
    corpus = random_texts(300, seed=1)
    return {kind: build_tokenizer(kind, corpus) for kind in KINDS}


def _dyadic(rng: random.Random, num: int) -> list[float]:
    return [rng.randint(-4096, 4096) / 1024 for _ in range(num)]


def _byte_ends(tokenizer, text: str) -> list[int]:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return list(content_byte_ends(text, [end for _, end in offsets]))


def _reference_destinations(weak_ends: list[int], strong_ends: list[int]) -> list[int]:
    r"""The rule written out by brute force, for each weak token on its own (no shared pointer)."""
    ends, weak = running_max(strong_ends), running_max(weak_ends)
    out = []
    for j, end in enumerate(weak):
        reaching = [t for t, e in enumerate(ends) if e >= end]
        if not reaching:
            out.append(UNMATCHED)
            continue
        first = reaching[0]
        if ends[first] > end:
            out.append(first)
            continue
        group = [t for t, e in enumerate(ends) if e == end]
        rank = sum(1 for i in range(j) if weak[i] == end)  # earlier weak tokens with the same end
        out.append(group[min(rank, len(group) - 1)])
    return out


def test_utf8_offsets_count_bytes_per_character():
    text = "aé😀日"
    assert utf8_offsets(text) == [0, 1, 3, 7, 10]
    assert content_byte_ends(text, [1, 2, 3, 4, 9, -2]) == (1, 3, 7, 10, 10, 0)  # clamped to the content


def test_hand_made_offset_maps():
    # pieces of one 4-byte character: 4 byte-fallback tokens on the weak side, 2 byte-level ones on the strong
    assert project_content([4, 4, 4, 4], [4, 4]) == [0, 1, 1, 1]
    # skipped whitespace: weak tokens ending inside a gap go to the next strong token
    assert project_content([3, 4, 7], [3, 7]) == [0, 1, 1]
    # an overlap (a strong end going back) is read through the running maximum
    assert project_content([2, 5, 6], [5, 3, 6]) == [0, 0, 2]
    # zero-length tokens at the start share the end 0
    assert project_content([0, 0, 2], [0, 2]) == [0, 0, 1]
    # a weak token ending after the last strong end is unmatched
    assert project_content([2, 5], [2, 4]) == [0, UNMATCHED]
    assert project_content([1], []) == [UNMATCHED]
    assert project_content([], [1, 2]) == []


def test_suffix_in_order_surplus_to_the_end_of_turn_token():
    assert project_suffix(1, 2, end_of_turn=0) == [0]  # llama3's <|eot_id|> -> qwen's <|im_end|>
    assert project_suffix(2, 1, end_of_turn=0) == [0, 0]  # qwen's <|im_end|> \n -> llama3's <|eot_id|>
    assert project_suffix(3, 2, end_of_turn=0) == [0, 1, 0]
    assert project_suffix(2, 0, end_of_turn=0) == [UNMATCHED, UNMATCHED]
    with pytest.raises(ValueError, match="end_of_turn"):
        project_suffix(1, 2, end_of_turn=2)


def test_turn_prefix_is_not_scored_and_indices_follow_the_strong_layout():
    weak = Turn(prefix=2, content_ends=(3, 6), suffix=2, end_of_turn=0)
    strong = Turn(prefix=1, content_ends=(6,), suffix=2, end_of_turn=0)
    assert project_turn(weak, strong) == [NOT_SCORED, NOT_SCORED, 1, 1, 2, 3]


@pytest.mark.parametrize(("weak_kind", "strong_kind"), list(itertools.product(KINDS, KINDS)))
def test_sum_and_rule_on_random_texts(tokenizers, weak_kind, strong_kind):
    r"""Every pair of kinds: the destinations follow the rule (checked against a brute-force reading of it) and
    ``sum w~ + unmatched == sum w`` exactly; on clean texts (not ending in whitespace) nothing is unmatched, and
    with trailing whitespace only a word-level strong tokenizer (which skips whitespace) leaves weak tokens
    unmatched."""
    rng = random.Random(f"{weak_kind}-{strong_kind}")
    weak_tok, strong_tok = tokenizers[weak_kind], tokenizers[strong_kind]
    skipped = 0
    for _ in range(NUM_TEXTS):
        text = random_text(rng)
        weak_ends, strong_ends = _byte_ends(weak_tok, text), _byte_ends(strong_tok, text)
        destinations = project_content(weak_ends, strong_ends)
        assert destinations == _reference_destinations(weak_ends, strong_ends), text
        assert all(dest == UNMATCHED or 0 <= dest < len(strong_ends) for dest in destinations)

        values = _dyadic(rng, len(weak_ends))
        projected, unmatched = project_values(values, destinations, len(strong_ends))
        assert sum(projected) + unmatched == sum(values)

        skipping = strong_kind == "word" and weak_kind != "word" and text[-1].isspace()
        assert (UNMATCHED in destinations) == skipping, text
        skipped += skipping

        clean = text.rstrip()
        if clean:
            clean_dest = project_content(_byte_ends(weak_tok, clean), _byte_ends(strong_tok, clean))
            assert UNMATCHED not in clean_dest, clean

    assert skipped > 0 or not (strong_kind == "word" and weak_kind != "word")  # the case above did occur


@pytest.mark.parametrize("kind", KINDS)
def test_identity_same_tokenizer_maps_every_token_to_itself(tokenizers, kind):
    rng = random.Random(kind)
    for _ in range(NUM_TEXTS):
        ends = _byte_ends(tokenizers[kind], random_text(rng))
        assert project_content(ends, ends) == list(range(len(ends)))
        values = _dyadic(rng, len(ends))
        assert project_values(values, list(range(len(ends))), len(ends)) == (values, 0.0)

    assert project_content([5, 3, 6], [5, 3, 6]) == [0, 1, 2]  # an offset map that goes back
    turn = Turn(prefix=1, content_ends=(0, 1, 1, 4, 4, 9), suffix=2, end_of_turn=0)
    assert project_turn(turn, turn) == [NOT_SCORED, *range(1, turn.num_tokens)]


def test_tensor_projection_matches_the_exact_one():
    rng = random.Random(0)
    for _ in range(50):
        size = rng.randint(1, 12)
        destinations = [rng.choice([UNMATCHED, NOT_SCORED, *range(size)]) for _ in range(rng.randint(0, 20))]
        values = _dyadic(rng, len(destinations))
        projected, unmatched = project_values(values, destinations, size)
        out = project_shift(torch.tensor(values, dtype=torch.float64), torch.tensor(destinations), size)
        assert out.shift.tolist() == projected
        unmatched_abs = sum(abs(v) for v, d in zip(values, destinations) if d == UNMATCHED)
        assert out.unmatched_abs.tolist() == [0.0] * (size - 1) + [unmatched_abs]
        moved = [abs(v) for v, d in zip(values, destinations) if d >= 0]
        assert float(out.weak_abs.sum()) == sum(moved)
        total = sum(moved) + unmatched_abs
        assert unmatched_fraction(out.weak_abs, out.unmatched_abs) == (unmatched_abs / total if total else 0.0)
        assert abs(unmatched) <= unmatched_abs

    with pytest.raises(ValueError, match="past the 2 strong"):
        project_shift(torch.ones(1), torch.tensor([2]), 2)
