"""Per-token log-probs of a model's scored positions, with the output layer applied to those positions only.

A training or precompute step needs ``log p(y_t)`` at the response positions alone, yet a causal LM's forward
pass applies its output layer (``hidden x vocab``, a large share of the FLOPs with a real vocabulary: about
27 % of Qwen2-0.5B's forward, 15 % of Qwen2-1.5B's) to every position, prompt and padding included. Here the
model runs its own forward as usual, and a pre-hook on its output layer hands that layer the hidden states of
the scored positions of every row (``rows x hidden`` instead of ``batch x length x hidden``). The layer module
itself is called, once per forward on every rank, so its hooks work as they do in a normal forward (DeepSpeed
ZeRO-3 gathers its partitioned weight, LoRA adds its delta), and whatever the model does to its logits after the
layer (Gemma-2's soft-capping, a logit scale) still happens. Architectures whose equality with the full-logits
path is tested are listed in :data:`RESPONSE_ONLY_MODEL_TYPES`; any other model, or a model whose output layer
is not called that way, falls back to full logits.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch

from .losses import IGNORE_INDEX, policy_logps_and_alignment, response_mask, rows_logps_and_alignment


# Tested equal to the full-logits path (tests/test_scoring.py); `model_type` of the model's config.
RESPONSE_ONLY_MODEL_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral", "gemma2"})


class TokenScores(NamedTuple):
    r"""Each ``(batch, length - 1)`` and aligned with ``labels[:, 1:]``, 0 outside the scored positions."""

    logps: torch.Tensor  # log pi(y_t) in float32, with gradient
    aligned: torch.Tensor  # WPO's alignment term a_t (see ``losses.policy_logps_and_alignment``), no gradient
    mask: torch.Tensor  # the scored positions
    mean_logits: torch.Tensor  # (batch,): the mean logit over each row's scored positions and the vocabulary


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def supports_response_only(model: torch.nn.Module) -> bool:
    config = getattr(_unwrap(model), "config", None)
    return getattr(config, "model_type", None) in RESPONSE_ONLY_MODEL_TYPES


@contextmanager
def _scored_positions_only(output_layer: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    def keep_scored(module, args):
        hidden = args[0]  # (batch, length, hidden) as the model hands it over
        return (hidden[rows, cols].unsqueeze(0), *args[1:])

    handle = output_layer.register_forward_pre_hook(keep_scored)
    try:
        yield
    finally:
        handle.remove()


def _mean_logits(logits: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per row, the mean of ``logits`` (``scored positions x vocab``) over its scored positions and the vocabulary."""
    sums = torch.zeros(mask.size(0), dtype=torch.float32, device=logits.device)
    sums.index_add_(0, rows, logits.detach().float().mean(-1))
    return sums / mask.sum(-1).clamp(min=1)


def score_tokens(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    alignment: str = "none",
    response_only: bool = True,
    labels_key: str = "labels",
) -> TokenScores:
    r"""Run ``model`` on ``batch`` (its ``labels_key`` column is not passed to the model) and score the labels."""
    labels = batch[labels_key]
    inputs = {key: value for key, value in batch.items() if key != labels_key}
    mask = response_mask(labels, IGNORE_INDEX)
    if response_only and supports_response_only(model):
        rows, cols = mask.nonzero(as_tuple=True)  # position t of row b predicts labels[b, t + 1]
        with _scored_positions_only(_unwrap(model).get_output_embeddings(), rows, cols):
            logits = model(**inputs, use_cache=False).logits

        if logits.dim() == 3 and logits.size(0) == 1 and logits.size(1) == rows.numel():
            flat = logits[0]
            logps, aligned = rows_logps_and_alignment(flat, labels[:, 1:][mask], alignment)
            zeros = torch.zeros(mask.shape, dtype=torch.float32, device=flat.device)
            return TokenScores(
                zeros.masked_scatter(mask, logps),
                zeros.masked_scatter(mask, aligned),
                mask,
                _mean_logits(flat, rows, mask),
            )

        if logits.shape[:2] != labels.shape:  # the hook fired on a layer that is not the output layer
            raise RuntimeError(
                f"{type(_unwrap(model)).__name__} does not apply its output layer once to the last hidden states; "
                "set `response_only_logits: false`."
            )
    else:
        logits = model(**inputs, use_cache=False).logits

    logps, aligned, mask = policy_logps_and_alignment(logits, labels, alignment)  # full logits
    rows, cols = mask.nonzero(as_tuple=True)
    return TokenScores(logps, aligned, mask, _mean_logits(logits.detach()[rows, cols], rows, mask))
