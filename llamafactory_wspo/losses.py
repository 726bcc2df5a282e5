"""The loss mathematics, as small pure tensor functions (no model, no trainer).

Notation follows ``ALGORITHMS.md``: ``y_t`` are the response tokens, i.e. the positions whose label
is not ``IGNORE_INDEX`` after the usual one-token shift. Every per-token tensor here has shape
``(batch, length - 1)`` and is aligned with ``labels[:, 1:]``.
"""

import torch


IGNORE_INDEX = -100


def response_mask(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    r"""``mask[b, t]`` is true where ``labels[b, t + 1]`` is a response token."""
    return labels[:, 1:] != ignore_index


def per_token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``log p(y_t | x, y_<t)`` in float32 for every response token, and the response mask.

    ``logits`` is ``(batch, length, vocab)`` in any dtype. The float32 log-softmax is taken one
    sequence at a time, so the only float32 copy alive is ``length x vocab`` for one row; masked
    positions hold 0.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match.")

    mask = response_mask(labels, ignore_index)
    targets = labels[:, 1:].masked_fill(~mask, 0)
    logps = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for row in range(logits.size(0)):
        row_logits = logits[row, :-1].float()
        picked = row_logits.gather(-1, targets[row].unsqueeze(-1)).squeeze(-1)
        logps[row] = picked - torch.logsumexp(row_logits, dim=-1)

    return logps.masked_fill(~mask, 0.0), mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-example mean of ``values`` over the response tokens (0 for an example without any)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def wspo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    weak_shift: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    r"""Per-example WSPO loss (Zhu et al., ICLR 2025, arXiv 2410.18640, the token-level objective of Sec. 3).

    ``l(x, y) = (1/T) * sum_t (gamma * s_t - w_t) ** 2`` with the strong shift
    ``s_t = log pi_theta(y_t) - log pi_ref(y_t)`` and the weak shift
    ``w_t = log pi_w*(y_t) - log pi_w0(y_t)``. Returns shape ``(batch,)``; the batch loss is its mean.
    """
    strong_shift = policy_logps - ref_logps.float()
    return masked_mean((gamma * strong_shift - weak_shift.float()) ** 2, mask)


def sft_loss(policy_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-example SFT regulariser ``-(1/T) * sum_t log pi_theta(y_t)`` (added with weight ``pref_ftx``)."""
    return -masked_mean(policy_logps, mask)


def policy_logps_and_alignment(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alignment: str = "none",
    chunk_size: int = 512,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-token ``log pi(y_t)`` (with gradient) and WPO's alignment term ``a_t`` (without), in float32.

    WPO (Zhou et al., EMNLP 2024, arXiv 2406.11827, Sec. 3.2) aligns each token's log-prob with the
    policy's own outputs:

    * ``sampled``: ``a_t = log pi(y_t) - log sum_v pi(v)^2``, with
      ``log sum_v p_v^2 = logsumexp(2z) - 2 logsumexp(z)``;
    * ``greedy``: ``a_t = log pi(y_t) - log max_v pi(v)``, with ``log max_v p_v = max(z) - logsumexp(z)``;
    * ``none``: ``a_t = log pi(y_t)``.

    No probability tensor is materialised: the float32 work runs on ``chunk_size`` positions of one
    sequence at a time. Returns ``(logps, alignment, mask)``, each ``(batch, length - 1)``.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match.")

    mask = response_mask(labels, ignore_index)
    targets = labels[:, 1:].masked_fill(~mask, 0)
    rows = []
    aligned = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    for row in range(logits.size(0)):
        pieces = []
        for start in range(0, targets.size(1), chunk_size):
            end = min(start + chunk_size, targets.size(1))
            z = logits[row, start:end].float()  # position t predicts token t + 1
            target = targets[row, start:end]
            lse = torch.logsumexp(z, dim=-1)
            logp = z.gather(-1, target.unsqueeze(-1)).squeeze(-1) - lse
            pieces.append(logp)
            with torch.no_grad():
                if alignment == "sampled":
                    norm = torch.logsumexp(2.0 * z.detach(), dim=-1) - 2.0 * lse.detach()
                elif alignment == "greedy":
                    norm = z.detach().max(dim=-1).values - lse.detach()
                elif alignment == "none":
                    norm = torch.zeros_like(lse)
                else:
                    raise ValueError(f"Unknown WPO alignment: {alignment}.")

                aligned[row, start:end] = logp.detach() - norm

        rows.append(torch.cat(pieces))

    logps = torch.stack(rows).masked_fill(~mask, 0.0)
    return logps, aligned.masked_fill(~mask, 0.0), mask


def wpo_sequence_weight(alignment: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""``w(x, y) = exp((1/T) sum_t a_t)``, per sequence, without gradient."""
    return masked_mean(alignment.detach(), mask).exp()


def wpo_pair_weight(chosen_weight: torch.Tensor, rejected_weight: torch.Tensor, weighting: str) -> torch.Tensor:
    r"""The weight of a pair's loss, clamped at 1: WPO (``pair``), WPO_w (``chosen``) or WPO_l (``rejected``)."""
    if weighting == "pair":
        weight = chosen_weight * rejected_weight
    elif weighting == "chosen":
        weight = chosen_weight
    elif weighting == "rejected":
        weight = rejected_weight
    else:
        raise ValueError(f"Unknown WPO weighting: {weighting}.")

    return weight.detach().clamp(max=1.0)


def wpo_unpaired_weights(weights: torch.Tensor, desirable: torch.Tensor) -> torch.Tensor:
    r"""KTO form: within the batch, the desirable outputs' weights sum to 1 and so do the undesirable ones'."""
    weights = weights.detach()
    out = torch.zeros_like(weights)
    for group in (desirable, ~desirable):
        if group.any():
            out[group] = weights[group] / weights[group].sum().clamp(min=torch.finfo(weights.dtype).tiny)

    return out
