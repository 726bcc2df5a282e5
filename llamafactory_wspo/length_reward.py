"""Rule-based rewards: the summary-length reward of the WSPO paper's XSUM experiment.

Pure Python, no torch: the same functions serve the ``grpo`` stage (as TRL reward functions), the
reward server (``llamafactory-wspo reward-server``) and the XSUM evaluation (``llamafactory-wspo eval-xsum``).

The length reward of a text with ``L`` words (whitespace-separated) for the target range
``[L_min, L_max]`` is

    r(L) = 1                                   if L_min <= L <= L_max
    r(L) = 1 - d(L) / (L_max - L_min)          otherwise,  d(L) = max(L_min - L, L - L_max)

that is, 1 inside the range and falling linearly by one for every range width outside it, with no
floor. It is continuous, so a policy-gradient method sees a signal even far from the range.
"""

from collections.abc import Iterable, Sequence
from typing import Any


DEFAULT_LENGTH_MIN = 20
DEFAULT_LENGTH_MAX = 30


def word_count(text: str) -> int:
    r"""Number of whitespace-separated words."""
    return len(text.split())


def check_length_range(length_min: int, length_max: int) -> None:
    if not 0 <= length_min < length_max:
        raise ValueError(
            f"The length range needs 0 <= length_min < length_max, got length_min={length_min} and "
            f"length_max={length_max}: set `length_reward_min` below `length_reward_max`."
        )


def length_reward_from_count(
    length: int, length_min: int = DEFAULT_LENGTH_MIN, length_max: int = DEFAULT_LENGTH_MAX
) -> float:
    r"""The reward of a text of ``length`` words (see the module docstring)."""
    check_length_range(length_min, length_max)
    distance = max(length_min - length, length - length_max, 0)
    return 1.0 - distance / (length_max - length_min)


def length_reward(
    texts: Iterable[str], length_min: int = DEFAULT_LENGTH_MIN, length_max: int = DEFAULT_LENGTH_MAX
) -> list[float]:
    r"""Length reward of each text."""
    return [length_reward_from_count(word_count(text), length_min, length_max) for text in texts]


def completion_text(completion: Any) -> str:
    r"""The text of a TRL completion: a string, or a conversation whose last message is the reply."""
    if isinstance(completion, str):
        return completion

    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))

    raise TypeError(f"Cannot read a completion of type {type(completion).__name__}.")


class LengthReward:
    r"""A TRL reward function (``f(prompts, completions, **kwargs) -> list[float]``) for a length range."""

    def __init__(self, length_min: int = DEFAULT_LENGTH_MIN, length_max: int = DEFAULT_LENGTH_MAX) -> None:
        check_length_range(length_min, length_max)
        self.length_min = length_min
        self.length_max = length_max
        self.__name__ = "length"  # TRL names the logged metric after the function

    def __call__(self, prompts: Sequence[Any] = (), completions: Sequence[Any] = (), **kwargs: Any) -> list[float]:
        return length_reward((completion_text(c) for c in completions), self.length_min, self.length_max)
