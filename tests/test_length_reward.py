"""The summary-length reward (``llamafactory_wspo.length_reward``) against values worked out by hand."""

import pytest

from llamafactory_wspo.length_reward import (
    LengthReward,
    completion_text,
    length_reward,
    length_reward_from_count,
    word_count,
)


def words(n: int) -> str:
    return " ".join(["word"] * n)


# r(L) for [L_min, L_max] = [20, 30] (width 10): 1 inside, minus 1/10 per word outside, no floor.
HAND_20_30 = {
    0: -1.0,  # 20 short: 1 - 20/10
    5: -0.5,
    10: 0.0,
    15: 0.5,
    19: 0.9,
    20: 1.0,  # boundary
    21: 1.0,
    25: 1.0,
    29: 1.0,
    30: 1.0,  # boundary
    31: 0.9,
    35: 0.5,
    40: 0.0,
    60: -2.0,
}
# [3, 5] (width 2): half a point per word outside.
HAND_3_5 = {0: -0.5, 1: 0.0, 2: 0.5, 3: 1.0, 4: 1.0, 5: 1.0, 6: 0.5, 7: 0.0, 9: -1.0}


@pytest.mark.parametrize(("length", "expected"), sorted(HAND_20_30.items()))
def test_default_range_by_hand(length, expected):
    assert length_reward_from_count(length) == pytest.approx(expected)
    assert length_reward([words(length)]) == [pytest.approx(expected)]


@pytest.mark.parametrize(("length", "expected"), sorted(HAND_3_5.items()))
def test_other_range_by_hand(length, expected):
    assert length_reward_from_count(length, 3, 5) == pytest.approx(expected)
    assert LengthReward(3, 5)(prompts=["p"], completions=[words(length)]) == [pytest.approx(expected)]


def test_words_are_whitespace_separated():
    assert word_count("") == 0
    assert word_count("  \n\t ") == 0
    assert word_count(" one\ntwo\t three  ") == 3
    assert word_count("state-of-the-art, isn't it?") == 3  # punctuation stays inside its word
    assert length_reward(["", "   "], 3, 5) == [pytest.approx(-0.5), pytest.approx(-0.5)]
    assert length_reward(["a\nb\n\nc d"], 3, 5) == [1.0]
    assert length_reward([]) == []


@pytest.mark.parametrize(("length_min", "length_max"), [(5, 5), (6, 5), (-1, 5)])
def test_bad_range_is_an_error(length_min, length_max):
    for call in (
        lambda: length_reward_from_count(3, length_min, length_max),
        lambda: length_reward(["a b"], length_min, length_max),
        lambda: LengthReward(length_min, length_max),
    ):
        with pytest.raises(ValueError, match="length_reward_min"):
            call()


def test_trl_callable_with_string_and_conversational_completions():
    reward = LengthReward(3, 5)
    assert reward.__name__ == "length"  # TRL logs `rewards/length/mean`
    assert (reward.length_min, reward.length_max) == (3, 5)
    strings = [words(1), words(4), words(8), ""]
    expected = [0.0, 1.0, -0.5, -0.5]
    assert reward(prompts=["p"] * 4, completions=strings) == pytest.approx(expected)
    conversations = [[{"role": "assistant", "content": text}] for text in strings]
    assert reward(prompts=[[{"role": "user", "content": "p"}]] * 4, completions=conversations) == pytest.approx(
        expected
    )
    # TRL passes extra columns as keyword arguments; only the last message of a conversation is the reply.
    multi = [[{"role": "user", "content": words(20)}, {"role": "assistant", "content": words(5)}]]
    assert reward(prompts=["p"], completions=multi, completion_ids=[[1, 2]], reference=["x"]) == [1.0]
    assert LengthReward()(completions=[words(25)]) == [1.0]  # default range [20, 30]


def test_completion_text():
    assert completion_text("a b") == "a b"
    assert completion_text([{"role": "assistant", "content": "c d"}]) == "c d"
    assert completion_text([{"role": "assistant"}]) == ""
    with pytest.raises(TypeError, match="int"):
        completion_text(3)
    with pytest.raises(TypeError):
        LengthReward()(completions=[None])
