"""The loss mathematics, as small pure tensor functions (no model, no trainer).

WSPO is Zhu et al., "Weak-to-Strong Preference Optimization", ICLR 2025, arXiv:2410.18640; WPO is Zhou et al.,
"WPO: Enhancing RLHF with Weighted Preference Optimization", EMNLP 2024, arXiv:2406.11827. ``y_t`` are the response
tokens, i.e. the positions whose label is not ``IGNORE_INDEX`` after the usual one-token shift. Every per-token
tensor here has shape ``(batch, length - 1)`` and is aligned with ``labels[:, 1:]``.
"""

import torch


IGNORE_INDEX = -100


def response_mask(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    r"""``mask[b, t]`` is true where ``labels[b, t + 1]`` is a response token."""
    return labels[:, 1:] != ignore_index


def per_token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``log p(y_t | x, y_<t)`` in float32 for every response token, and the response mask.

    ``logits`` is ``(batch, length, vocab)`` in any dtype. Only response positions are computed (prompt and
    padding positions cost nothing), ``chunk_size`` of them at a time (default: a 128 MiB float32 working
    set), and no float32 copy of the logits is kept for the backward pass, which recomputes each chunk's
    softmax (see :class:`_TokenLogps`). Masked positions hold 0.
    """
    logps, _, mask = policy_logps_and_alignment(logits, labels, "none", chunk_size, ignore_index)
    return logps, mask


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
    r"""Per-example WSPO loss (the paper's token-level objective).

    ``l(x, y) = (1/T) * sum_t (gamma * s_t - w_t) ** 2`` with the strong shift
    ``s_t = log pi_theta(y_t) - log pi_ref(y_t)`` and the weak shift
    ``w_t = log pi_w*(y_t) - log pi_w0(y_t)``. Returns shape ``(batch,)``; the batch loss is its mean. The reference
    and the weak shift are constants of the loss (detached): only ``policy_logps`` receives a gradient.
    """
    strong_shift = policy_logps - ref_logps.detach().float()
    return masked_mean((gamma * strong_shift - weak_shift.detach().float()) ** 2, mask)


def wspo_token_losses(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, weak_shift: torch.Tensor, gamma: float
) -> torch.Tensor:
    r"""The WSPO loss of every token, ``(gamma * s_t - w_t) ** 2``, before any mean: packed rows average it per
    example (:mod:`llamafactory_wspo.packing`); :func:`wspo_loss` is its per-row mean."""
    return (gamma * (policy_logps - ref_logps.detach().float()) - weak_shift.detach().float()) ** 2


def sft_loss(policy_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-example SFT regulariser ``-(1/T) * sum_t log pi_theta(y_t)`` (added with weight ``pref_ftx``)."""
    return -masked_mean(policy_logps, mask)


FLOAT32_CHUNK_BYTES = 128 * 2**20


class _TokenLogps(torch.autograd.Function):
    r"""``log softmax(z)[y]`` of the scored rows of ``logits`` (``rows x vocab``), with WPO's alignment term.

    ``index`` selects the scored rows (``None``: every row is scored). The float32 work runs ``chunk`` rows at a
    time. Forward keeps only each row's ``logsumexp`` (one float per token); backward recomputes the chunk's softmax
    from the logits (``d logp / dz = onehot(y) - softmax(z)``), so no float32 copy of the logits outlives its chunk.
    When every row is scored, float32 logits are read as views and the gradient is written straight into its rows
    (no zero-filled buffer). The alignment output carries no gradient.
    """

    @staticmethod
    def forward(ctx, logits, index, targets, alignment: str, chunk: int):
        logps = torch.empty(targets.numel(), dtype=torch.float32, device=logits.device)
        aligned = torch.empty_like(logps)
        lses = torch.empty_like(logps)
        for start in range(0, targets.numel(), chunk):
            end = start + chunk
            z, copied = _float_rows(logits, index, start, end)
            lse = torch.logsumexp(z, dim=-1)
            logp = z.gather(-1, targets[start:end].unsqueeze(-1)).squeeze(-1) - lse
            if alignment == "sampled":  # log sum_v p_v^2 = logsumexp(2z) - 2 logsumexp(z)
                norm = torch.logsumexp(z.mul_(2.0) if copied else z * 2.0, dim=-1) - 2.0 * lse
            elif alignment == "greedy":  # log max_v p_v = max(z) - logsumexp(z)
                norm = z.max(dim=-1).values - lse
            else:
                norm = 0.0
            logps[start:end], lses[start:end], aligned[start:end] = logp, lse, logp - norm
            del z

        ctx.save_for_backward(logits, index, targets, lses)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(aligned)
        return logps, aligned

    @staticmethod
    def backward(ctx, grad_logps, grad_aligned):
        logits, index, targets, lses = ctx.saved_tensors
        grad = torch.empty_like(logits) if index is None else torch.zeros_like(logits)
        for start in range(0, targets.numel(), ctx.chunk):
            end = start + ctx.chunk
            upstream = grad_logps[start:end].unsqueeze(-1)
            lse = lses[start:end].unsqueeze(-1)
            if index is None and logits.dtype == torch.float32:  # softmax written straight into the result
                chunk_grad = torch.sub(logits[start:end], lse, out=grad[start:end])
            else:
                chunk_grad = _float_rows(logits, index, start, end)[0].sub_(lse)
            chunk_grad.exp_().mul_(-upstream).scatter_add_(-1, targets[start:end].unsqueeze(-1), upstream)
            if index is not None:
                grad.index_copy_(0, index[start:end], chunk_grad.to(grad.dtype))
            elif chunk_grad.dtype != grad.dtype:
                grad[start:end].copy_(chunk_grad)

        return grad, None, None, None, None


def _float_rows(logits: torch.Tensor, index: torch.Tensor | None, start: int, end: int) -> tuple[torch.Tensor, bool]:
    r"""Scored rows ``start:end`` of ``logits`` in float32, and whether they are a copy (a view must not change)."""
    if index is None:
        rows = logits[start:end]
        return rows.float(), rows.dtype != torch.float32

    return logits.index_select(0, index[start:end]).float(), True


def rows_logps_and_alignment(
    logits: torch.Tensor, targets: torch.Tensor, alignment: str = "none", chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``log pi(targets[i])`` and WPO's alignment term for each row of ``logits`` (``rows x vocab``), in float32.

    The rows are the scored positions only (see ``llamafactory_wspo.scoring``); the float32 work runs in chunks
    (default: a 128 MiB float32 working set) and the backward pass recomputes each chunk's softmax, as in
    :func:`policy_logps_and_alignment`.
    """
    if alignment not in ("sampled", "greedy", "none"):
        raise ValueError(f"Unknown WPO alignment: {alignment}.")

    chunk = chunk_size or max(1, FLOAT32_CHUNK_BYTES // (4 * logits.size(-1)))
    return _TokenLogps.apply(logits, None, targets, alignment, chunk)


def policy_logps_and_alignment(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alignment: str = "none",
    chunk_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-token ``log pi(y_t)`` (with gradient) and WPO's alignment term ``a_t`` (without), in float32.

    WPO (Sec. 3.3; the sampled alignment is its Eq. (2)) aligns each token's log-prob with the policy's own outputs:

    * ``sampled``: ``a_t = log pi(y_t) - log sum_v pi(v)^2``, with
      ``log sum_v p_v^2 = logsumexp(2z) - 2 logsumexp(z)``;
    * ``greedy``: ``a_t = log pi(y_t) - log max_v pi(v)``, with ``log max_v p_v = max(z) - logsumexp(z)``;
    * ``none``: ``a_t = log pi(y_t)``.

    Only the response positions of the whole batch are computed, ``chunk_size`` at a time (default: a
    128 MiB float32 working set); no probability tensor is materialised and no float32 copy of the logits
    is kept for backward. Returns ``(logps, alignment, mask)``, each ``(batch, length - 1)``.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match.")
    if alignment not in ("sampled", "greedy", "none"):
        raise ValueError(f"Unknown WPO alignment: {alignment}.")

    mask = response_mask(labels, ignore_index)
    batch, length, vocab = logits.shape
    rows, cols = mask.nonzero(as_tuple=True)
    index = rows * length + cols  # position t of row b predicts labels[b, t + 1]
    targets = labels[:, 1:][mask]
    chunk = chunk_size or max(1, FLOAT32_CHUNK_BYTES // (4 * vocab))
    flat_logits = logits.reshape(batch * length, vocab)
    logps, aligned = _TokenLogps.apply(flat_logits, index, targets, alignment, chunk)
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    return zeros.masked_scatter(mask, logps), zeros.masked_scatter(mask, aligned), mask


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
