"""The per-token targets of the WSPO loss: the reference log-probs and the weak shift, stored by the precompute
pass or made per step; with cross-tokenizer WSPO the weak shift moved onto the strong tokens, and the
``wspo/projection_unmatched`` metric. The projection rule itself is :mod:`llamafactory_wspo.projection`."""

import torch

from ...logps.store import REF_LOGPS, WEAK_SHIFT
from ...projection import (
    UNMATCHED_ABS,
    WEAK_ABS,
    WEAK_ATTENTION_MASK,
    WEAK_INPUT_IDS,
    WEAK_LABELS,
    WEAK_PROJECTION,
    project_batch,
    project_shift,
    unmatched_fraction,
)


PROJECTION_COLUMNS = (WEAK_ABS, UNMATCHED_ABS)
WEAK_BATCH_COLUMNS = (WEAK_INPUT_IDS, WEAK_ATTENTION_MASK, WEAK_LABELS, WEAK_PROJECTION)
WSPO_COLUMNS = (REF_LOGPS, WEAK_SHIFT, *PROJECTION_COLUMNS)


def wspo_targets(logps: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    r"""The constant per-token parts of the WSPO loss, stored in the run's ``dtype``.

    ``WEAK_SHIFT`` is ``w_t = log pi_w*(y_t) - log pi_w0(y_t)`` (taken in float32, then cast) and
    ``REF_LOGPS`` is ``log pi_ref(y_t)``.
    """
    return {
        REF_LOGPS: logps["ref"].to(dtype),
        WEAK_SHIFT: (logps["weak_aligned"] - logps["weak_base"]).to(dtype),
    }


def projected_targets(logps: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    r"""``combine`` of the precompute pass for one row: the weak shift ``w_j = log pi_w*(y_j) - log pi_w0(y_j)`` of
    the weak response tokens, taken in float32, moved onto the strong ones by the row's ``weak_projection``
    (:func:`~llamafactory_wspo.projection.project_shift`), then cast to the run's ``dtype``; beside it the
    reference log-probs and the per-token parts of ``wspo/projection_unmatched``.

    A call without ``weak_projection`` (the pass's probe of the column names and sizes) maps token ``j`` to ``j``.
    """
    weak_shift = logps["weak_aligned"].float() - logps["weak_base"].float()
    projection = logps.get(WEAK_PROJECTION, torch.arange(weak_shift.numel()))
    projected = project_shift(weak_shift, projection, logps["ref"].numel())
    return {
        REF_LOGPS: logps["ref"].to(dtype),
        WEAK_SHIFT: projected.shift.to(dtype),
        WEAK_ABS: projected.weak_abs.to(dtype),
        UNMATCHED_ABS: projected.unmatched_abs.to(dtype),
    }


def pop_weak_batch(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    r"""Take the weak rendering out of a per-step batch: the weak models' batch and the projection (``None``: none)."""
    if WEAK_INPUT_IDS not in batch:
        return None

    weak = {name: batch.pop(name) for name in WEAK_BATCH_COLUMNS}
    inputs = {
        "input_ids": weak[WEAK_INPUT_IDS],
        "attention_mask": weak[WEAK_ATTENTION_MASK],
        "labels": weak[WEAK_LABELS],
    }
    return inputs, weak[WEAK_PROJECTION]


def project_per_step(
    weak_base: torch.Tensor,
    weak_aligned: torch.Tensor,
    weak_mask: torch.Tensor,
    projection: torch.Tensor,
    strong_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    r"""Per-step mode: the same weak columns as :func:`projected_targets`, for a padded batch (in float32)."""
    projected = project_batch(weak_aligned.float() - weak_base.float(), weak_mask, projection, strong_mask)
    return {WEAK_SHIFT: projected.shift, WEAK_ABS: projected.weak_abs, UNMATCHED_ABS: projected.unmatched_abs}


def projection_metrics(targets: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    r"""``wspo/projection_unmatched`` (``sum |unmatched w_j| / sum |w_j|`` over the batch) when the weak shift was
    projected; nothing otherwise."""
    if UNMATCHED_ABS not in targets:
        return {}

    return {f"{prefix}wspo/projection_unmatched": unmatched_fraction(targets[WEAK_ABS], targets[UNMATCHED_ABS])}
