"""Packed rows: which example each scored token belongs to, and per-example sums and means (pure tensor functions).

A packed row holds several examples one after another (LLaMA-Factory's packed SFT rows: ``position_ids`` restart at 0
where an example starts; with ``neat_packing`` each example attends only to itself). The loss must still be taken
per example, so every scored position ``t`` of ``mask`` (``(batch, length - 1)``, aligned with ``labels[:, 1:]``)
gets the index of its example, numbered across the whole batch in row order. Without packing every row is one
example, and every function here gives what the per-row reductions give.
"""

import torch


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    r"""``(batch, length)``: the number of the example each position belongs to within its row, from 0.

    An example starts where ``position_ids`` is 0 (LLaMA-Factory's packed rows restart positions per example; the
    padding at a row's end restarts at every position, so each padding token is a segment of its own, with nothing
    scored). ``position_ids`` of M-RoPE models (``(3, batch, length)``) are read on their first axis.
    """
    if position_ids.dim() == 3:
        position_ids = position_ids[0]

    return (position_ids == 0).long().cumsum(-1) - 1


def example_index(mask: torch.Tensor, segments: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    r"""The example of every scored position, and the number of examples that hold a scored position.

    ``mask`` is ``(batch, length - 1)``; ``segments`` (``(batch, length)``, from :func:`segment_ids`) or ``None``
    (one example per row). Position ``t`` predicts the token at ``t + 1``, so it belongs to the example of
    ``t + 1``; a scored position whose input token sits in another example (a prediction across a boundary) is an
    error. Returns ``index`` (``(batch, length - 1)``, long, in ``[0, n)`` at scored positions and ``-1``
    elsewhere) and ``n``. Examples are numbered in row order, then by position within a row.
    """
    batch, width = mask.shape
    if segments is None:
        owner = torch.arange(batch, device=mask.device).unsqueeze(1).expand(batch, width)
    else:
        target = segments[:, 1:].to(mask.device)
        if bool((mask & (segments[:, :-1].to(mask.device) != target)).any()):
            raise ValueError(
                "A scored token is predicted from the previous example of its packed row: every example must start "
                "with a prompt token (label IGNORE_INDEX)."
            )

        span = int(target.max().item()) + 1 if target.numel() else 1
        owner = torch.arange(batch, device=mask.device).unsqueeze(1) * span + target

    index = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    if not bool(mask.any()):
        return index, 0

    _, compact = torch.unique(owner[mask], sorted=True, return_inverse=True)
    index[mask] = compact
    return index, int(compact.max().item()) + 1


def per_example_sum(values: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    r"""``(count,)``: the sum of ``values`` over each example's scored positions (``index`` from
    :func:`example_index`); differentiable in ``values``."""
    scored = index >= 0
    out = torch.zeros(count, dtype=values.dtype, device=values.device)
    return out.index_add(0, index[scored], values[scored])


def per_example_count(index: torch.Tensor, count: int) -> torch.Tensor:
    r"""``(count,)`` float32: the number of scored positions of each example."""
    scored = index >= 0
    return torch.bincount(index[scored], minlength=count).float()


def per_example_mean(values: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    r"""``(count,)``: the mean of ``values`` over each example's scored positions."""
    sums = per_example_sum(values, index, count)
    return sums / per_example_count(index, count).to(sums.dtype).clamp(min=1.0)
