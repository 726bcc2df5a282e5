r"""How far the weak alignment moved the response tokens: statistics of the weak shift ``w_t``, and their warning.

WSPO makes the strong model copy the weak model's per-token shift ``w_t = log π_w*(y_t) - log π_w⁰(y_t)`` (divided
by γ). A weak alignment that pushed tokens down hard, such as DPO's known likelihood displacement, hands the strong
model a degenerate target; these statistics show it before training starts:

* the number of tokens, the mean of ``w``, the mean of ``|w|``, the share of tokens with ``|w| > 2`` nats, the
  extremes and the quantiles of ``w`` (:func:`statistics`);
* computed from a :class:`ShiftSummary`, which each rank of the precompute pass makes of its own share
  (:meth:`ShiftSummary.of`) and which add up exactly across ranks (:meth:`ShiftSummary.merge`): counts and sums are
  exact (float64), the quantiles are read from a histogram of bin width :data:`BIN_WIDTH` (1/64 nat) and are exact
  to half a bin within ``±`` :data:`HALF_RANGE` nats (clamped to the extremes, which are exact);
* two distributions: :data:`SHIFT`, the stored column that training reads (``w_t``, or in cross-tokenizer runs the
  projected ``w̃_t`` on the strong tokens), and, in cross-tokenizer runs only, :data:`WEAK_TOKENS`, the weak models'
  own ``w_j`` on their own response tokens, before the projection (:func:`pass_summaries`);
* the cache manifest stores them under :data:`STATISTICS_KEY`; a cache written before that field has them computed
  from its stored column when it is reused (:func:`cache_statistics`; the weak-token distribution of a
  cross-tokenizer cache is not stored in it and stays unknown);
* :func:`report` logs them and warns once when the mean ``|w|`` exceeds ``wspo_shift_warning`` (2 nats per token by
  default), on the weak tokens or on the projected shift.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..logging import get_logger
from ..projection import WEAK_PROJECTION
from .store import WEAK_SHIFT, manifest_version


logger = get_logger(__name__)

LARGE_SHIFT = 2.0  # nats: a token whose |w| exceeds this counts in the share of tokens moved hard
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
BIN_WIDTH = 1 / 64  # nats: the histogram's resolution (a power of two: every bin edge is exact in floating point)
HALF_RANGE = 256.0  # nats: the histogram covers [-HALF_RANGE, HALF_RANGE); values outside go to its end bins
NUM_BINS = int(2 * HALF_RANGE / BIN_WIDTH)
STATISTICS_KEY = "weak_shift_statistics"  # the cache manifest's field
SHIFT = "shift"  # the stored column: w_t per response token (cross-tokenizer: the projected w̃_t per strong token)
WEAK_TOKENS = "weak_tokens"  # cross-tokenizer only: w_j per weak response token, before the projection
DISTRIBUTIONS = {SHIFT: "response tokens", WEAK_TOKENS: "weak tokens, before the projection"}
PROJECTED = "strong tokens, after the projection"  # SHIFT's label in a cross-tokenizer run


@dataclass
class ShiftSummary:
    r"""What :func:`statistics` needs of a set of shift values, mergeable across ranks.

    ``histogram[i]`` counts the values in ``[-HALF_RANGE + i * BIN_WIDTH, -HALF_RANGE + (i + 1) * BIN_WIDTH)``; the
    first and last bins also hold the values below and above the range.
    """

    tokens: int = 0
    total: float = 0.0  # sum of w
    total_abs: float = 0.0  # sum of |w|
    large: int = 0  # tokens with |w| > LARGE_SHIFT
    minimum: float = math.inf
    maximum: float = -math.inf
    histogram: torch.Tensor = field(default_factory=lambda: torch.zeros(NUM_BINS, dtype=torch.int64))

    @classmethod
    def of(cls, values: torch.Tensor) -> "ShiftSummary":
        r"""The summary of ``values`` (any shape and floating dtype; summed in float64)."""
        values = values.detach().reshape(-1).double().cpu()
        if not values.numel():
            return cls()

        index = torch.floor((values + HALF_RANGE) / BIN_WIDTH).clamp(0, NUM_BINS - 1).long()
        return cls(
            tokens=values.numel(),
            total=float(values.sum()),
            total_abs=float(values.abs().sum()),
            large=int((values.abs() > LARGE_SHIFT).sum()),
            minimum=float(values.min()),
            maximum=float(values.max()),
            histogram=torch.bincount(index, minlength=NUM_BINS),
        )

    def merge(self, other: "ShiftSummary") -> "ShiftSummary":
        r"""The summary of both sets of values together."""
        return ShiftSummary(
            tokens=self.tokens + other.tokens,
            total=self.total + other.total,
            total_abs=self.total_abs + other.total_abs,
            large=self.large + other.large,
            minimum=min(self.minimum, other.minimum),
            maximum=max(self.maximum, other.maximum),
            histogram=self.histogram + other.histogram,
        )

    def quantile(self, q: float) -> float:
        r"""The ``q`` quantile: the value of rank ``floor(q * (tokens - 1))`` counting from 0 (numpy's ``lower``
        method), read as the centre of its bin and clamped to the exact extremes (the first and last rank: exact)."""
        rank = math.floor(q * (self.tokens - 1))
        if rank in (0, self.tokens - 1):
            return self.minimum if rank == 0 else self.maximum

        index = int(torch.searchsorted(self.histogram.cumsum(0), rank, right=True))
        centre = -HALF_RANGE + (index + 0.5) * BIN_WIDTH
        return min(max(centre, self.minimum), self.maximum)


def statistics(summary: ShiftSummary) -> dict[str, Any]:
    r"""``tokens``, ``mean``, ``mean_abs``, ``share_above_2`` (the share of tokens with ``|w| > 2`` nats), ``min``,
    ``max`` and ``quantiles`` (``{"0.01": ..., ..., "0.99": ...}``); ``{"tokens": 0}`` for no values."""
    if not summary.tokens:
        return {"tokens": 0}

    return {
        "tokens": summary.tokens,
        "mean": summary.total / summary.tokens,
        "mean_abs": summary.total_abs / summary.tokens,
        "share_above_2": summary.large / summary.tokens,
        "min": summary.minimum,
        "max": summary.maximum,
        "quantiles": {str(q): summary.quantile(q) for q in QUANTILES},
    }


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    r"""The mean of ``values`` over the positions of ``mask`` (0 without any): ``wspo/weak_shift_mean`` of a batch."""
    return float((values * mask).sum() / mask.sum().clamp(min=1))


def pass_summaries(
    rows: Mapping[int, Mapping[str, torch.Tensor]],
    names: Sequence[str],
    scores: Mapping[str, Mapping[int, torch.Tensor]],
    columns: Mapping[int, Mapping[str, torch.Tensor]],
) -> dict[str, ShiftSummary]:
    r"""One rank's summaries in the precompute pass: of the stored ``weak_shift`` column of its ``rows`` (if the stage
    stores one: WSPO), and, when its rows carry a ``weak_projection`` (cross-tokenizer WSPO), of the weak models' own
    shift ``w_j`` from their ``scores``, token by token before the projection. ``{}`` for a stage without a weak
    shift."""

    if WEAK_SHIFT not in names:
        return {}

    shift = [row[WEAK_SHIFT].reshape(-1) for row in rows.values()]
    out = {SHIFT: ShiftSummary.of(torch.cat(shift)) if shift else ShiftSummary()}
    if any(WEAK_PROJECTION in row for row in columns.values()):
        weak = [scores["weak_aligned"][uid].float() - scores["weak_base"][uid].float() for uid in rows]
        out[WEAK_TOKENS] = ShiftSummary.of(torch.cat(weak)) if weak else ShiftSummary()

    return out


def merge_summaries(per_rank: Iterable[Mapping[str, ShiftSummary]]) -> dict[str, dict[str, Any]]:
    r"""The statistics of every rank's :func:`pass_summaries` together, for the manifest (``{}``: no weak shift)."""
    merged: dict[str, ShiftSummary] = {}
    for summaries in per_rank:
        for name, summary in summaries.items():
            merged[name] = merged[name].merge(summary) if name in merged else summary

    return {name: statistics(summary) for name, summary in merged.items()}


def cache_statistics(manifest: Mapping[str, Any], columns: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    r"""The weak-shift statistics of a cache: its manifest's, or computed from its stored ``weak_shift`` column when
    the manifest predates them (manifest version 1; marked ``"from_cached_values": true``, not written back: the
    cache may be read-only or in use by another run). ``{}`` for a stage without a weak shift."""

    stored = manifest.get(STATISTICS_KEY) if manifest_version(manifest) >= 2 else None
    if isinstance(stored, dict) and stored:
        return dict(stored)

    if WEAK_SHIFT not in columns:
        return {}

    return {SHIFT: statistics(ShiftSummary.of(columns[WEAK_SHIFT])), "from_cached_values": True}


def describe(stats: Mapping[str, Any]) -> str:
    r"""One distribution in words: ``mean -0.41, mean |w| 1.32, |w| > 2 for 12.0% of 5000 tokens, quantiles ...``."""
    if not stats.get("tokens"):
        return "no tokens"

    quantiles = ", ".join(f"{float(q):.0%} {value:+.2f}" for q, value in stats["quantiles"].items())
    return (
        f"mean {stats['mean']:+.3f}, mean |w| {stats['mean_abs']:.3f}, |w| > {LARGE_SHIFT:g} for "
        f"{stats['share_above_2']:.1%} of {stats['tokens']} tokens; min {stats['min']:+.2f}, max {stats['max']:+.2f}; "
        f"quantiles {quantiles}"
    )


def _labels(stats: Mapping[str, Any]) -> dict[str, str]:
    return {**DISTRIBUTIONS, SHIFT: PROJECTED} if WEAK_TOKENS in stats else DISTRIBUTIONS


def warning_text(
    values: Mapping[str, float], threshold: float, gamma: float | None = None, cross: bool = False
) -> str:
    r"""The warning for mean ``|w|`` ``values`` (per distribution name) that exceed ``threshold`` nats per token
    (``cross``: a cross-tokenizer run, whose stored shift is the projected one)."""
    labels = _labels({WEAK_TOKENS: None} if cross else {})
    where = "; ".join(f"{value:.2f} on the {labels[name]}" for name, value in values.items())
    larger = f" (now {gamma:g})" if gamma is not None else ""
    return (
        f"The weak shift w_t = log π_w*(y_t) - log π_w⁰(y_t) is large: its mean |w_t| is above "
        f"`wspo_shift_warning: {threshold:g}` nats per token ({where}). The weak alignment moved the response tokens "
        "hard (for example DPO's likelihood displacement, which pushes down the chosen responses too), and WSPO makes "
        "the strong model copy this shift divided by γ: a degenerate target. Try a milder weak alignment (fewer "
        f"steps, a smaller learning rate, a larger DPO β) or a larger γ (`pref_beta`{larger}). The whole distribution "
        "is in the log line above and in the cache's manifest.json (`weak_shift_statistics`)."
    )


def exceeding(stats: Mapping[str, Any], threshold: float) -> dict[str, float]:
    r"""The distributions of ``stats`` whose mean ``|w|`` exceeds ``threshold``: name -> mean ``|w|``."""
    out = {}
    for name in DISTRIBUTIONS:
        mean_abs = (stats.get(name) or {}).get("mean_abs")
        if mean_abs is not None and mean_abs > threshold:
            out[name] = mean_abs

    return out


def report(stats: Mapping[str, Any], threshold: float, gamma: float | None = None) -> bool:
    r"""Log the statistics of a WSPO run's weak shift (rank 0) and warn once if a mean ``|w|`` exceeds ``threshold``;
    whether it warned."""
    if not stats:
        return False

    source = " (computed from the cached values: the cache predates these statistics)"
    suffix = source if stats.get("from_cached_values") else ""
    for name, label in _labels(stats).items():
        if name in stats:
            logger.info_rank0(f"Weak shift over the {label}{suffix}: {describe(stats[name])}.")

    over = exceeding(stats, threshold)
    if over:
        logger.warning_rank0(warning_text(over, threshold, gamma, cross=WEAK_TOKENS in stats))

    return bool(over)
