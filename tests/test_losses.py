"""The loss mathematics against an independent per-token computation (NumPy, explicit loops)."""

import math

import numpy as np
import pytest
import torch

from llamafactory_wspo.losses import IGNORE_INDEX, per_token_logps, sft_loss, wspo_loss


def _reference_logps(logits: np.ndarray, labels: np.ndarray) -> list[list[float]]:
    r"""log softmax(logits[t])[labels[t + 1]] for each response token, one example at a time, in float64."""
    out = []
    for row_logits, row_labels in zip(logits, labels):
        values = []
        for t in range(len(row_labels) - 1):
            target = row_labels[t + 1]
            if target == IGNORE_INDEX:
                continue

            z = row_logits[t].astype(np.float64)
            values.append(z[target] - (z.max() + math.log(np.exp(z - z.max()).sum())))

        out.append(values)

    return out


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    batch_size, length, vocab = 3, 9, 11
    logits = rng.normal(size=(batch_size, length, vocab)).astype(np.float32) * 3
    labels = rng.integers(0, vocab, size=(batch_size, length))
    labels[0, :4] = IGNORE_INDEX  # prompt
    labels[1, :2] = IGNORE_INDEX
    labels[1, 7:] = IGNORE_INDEX  # right padding
    labels[2, :6] = IGNORE_INDEX
    return logits, labels


def test_per_token_logps_matches_log_softmax(batch):
    logits, labels = batch
    logps, mask = per_token_logps(torch.from_numpy(logits).to(torch.bfloat16).float(), torch.from_numpy(labels))
    expected = _reference_logps(torch.from_numpy(logits).to(torch.bfloat16).float().numpy(), labels)
    assert logps.dtype == torch.float32
    for row in range(len(expected)):
        got = logps[row][mask[row]].tolist()
        assert got == pytest.approx(expected[row], abs=1e-5)
        assert (logps[row][~mask[row]] == 0).all()


def test_per_token_logps_is_float32_for_bf16_logits(batch):
    logits, labels = batch
    bf16 = torch.from_numpy(logits).to(torch.bfloat16)
    logps, _ = per_token_logps(bf16, torch.from_numpy(labels))
    assert logps.dtype == torch.float32


@pytest.mark.parametrize("gamma", [0.1, 1.0, 2.5])
def test_wspo_loss_against_per_token_loop(batch, gamma):
    logits, labels = batch
    rng = np.random.default_rng(1)
    policy = _reference_logps(logits, labels)
    ref = [[v + rng.normal() * 0.3 for v in row] for row in policy]
    base = [[rng.normal() - 3 for _ in row] for row in policy]
    aligned = [[b + rng.normal() for b in row] for row in base]

    expected = []
    for p_row, r_row, b_row, a_row in zip(policy, ref, base, aligned):
        terms = [(gamma * (p - r) - (a - b)) ** 2 for p, r, b, a in zip(p_row, r_row, b_row, a_row)]
        expected.append(sum(terms) / len(terms))

    policy_logps, mask = per_token_logps(torch.from_numpy(logits), torch.from_numpy(labels))

    def dense(rows):
        out = torch.zeros(mask.shape, dtype=torch.float32)
        out[mask] = torch.tensor([v for row in rows for v in row], dtype=torch.float32)
        return out

    weak_shift = dense(aligned) - dense(base)
    losses = wspo_loss(policy_logps, dense(ref), weak_shift, mask, gamma)
    assert losses.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert losses.mean().item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_wspo_loss_optimum_is_weak_shift_over_gamma():
    mask = torch.tensor([[False, True, True, True]])
    ref = torch.tensor([[0.0, -2.0, -1.0, -3.0]])
    weak_shift = torch.tensor([[0.0, 0.05, -0.02, 0.1]])
    gamma = 0.1
    policy = (ref + weak_shift / gamma).masked_fill(~mask, 0.0)
    assert wspo_loss(policy, ref, weak_shift, mask, gamma).item() == pytest.approx(0.0, abs=1e-10)
    assert wspo_loss(ref, ref, weak_shift, mask, gamma).item() == pytest.approx((0.05**2 + 0.02**2 + 0.1**2) / 3)


def test_wspo_loss_gradient_flows_only_through_policy(batch):
    r"""The reference log-probs and the weak shift are constants of the loss: even when they require a gradient,
    backward leaves them without one, and the policy's gradient is the closed form of the squared error."""
    logits, labels = batch
    logits = torch.from_numpy(logits).requires_grad_(True)
    policy_logps, mask = per_token_logps(logits, torch.from_numpy(labels))
    policy_logps.retain_grad()
    rng = np.random.default_rng(2)
    ref = torch.from_numpy(policy_logps.detach().numpy() - 0.5 + rng.normal(size=mask.shape) * 0.1).float()
    weak_shift = torch.from_numpy(rng.normal(size=mask.shape) * 0.05).float()
    ref.requires_grad_(True)
    weak_shift.requires_grad_(True)
    gamma = 0.1
    wspo_loss(policy_logps, ref, weak_shift, mask, gamma).mean().backward()

    assert ref.grad is None, "the reference log-probs received a gradient"  # the loss must detach them
    assert weak_shift.grad is None, "the weak shift received a gradient"
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # d/dp_t of mean_b (1/T_b) sum_t (gamma (p_t - r_t) - w_t)^2 = 2 gamma (gamma (p_t - r_t) - w_t) / (T_b B)
    p, r, w = (t.detach().double() for t in (policy_logps, ref, weak_shift))
    tokens = mask.sum(-1, keepdim=True).double()
    expected = 2 * gamma * (gamma * (p - r) - w) * mask / (tokens * mask.size(0))
    assert torch.allclose(policy_logps.grad.double(), expected, atol=1e-7)


def test_sft_loss_is_mean_negative_log_likelihood(batch):
    logits, labels = batch
    policy_logps, mask = per_token_logps(torch.from_numpy(logits), torch.from_numpy(labels))
    expected = [-sum(row) / len(row) for row in _reference_logps(logits, labels)]
    assert sft_loss(policy_logps, mask).tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_per_token_logps_gradient_matches_log_softmax(dtype, chunk_size):
    r"""The recomputing backward equals autograd through a float64 log-softmax (all positions, then masked)."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 11, generator=generator) * 3).to(dtype)
    labels = torch.randint(0, 11, (3, 7), generator=generator)
    labels[0, :3] = IGNORE_INDEX  # a prompt
    labels[2, 5:] = IGNORE_INDEX  # padding
    upstream = torch.randn(3, 6, generator=generator)

    ours = logits.clone().requires_grad_(True)
    logps, mask = per_token_logps(ours, labels, chunk_size=chunk_size)
    (logps * upstream).sum().backward()

    reference = logits.double().clone().requires_grad_(True)
    log_probs = torch.log_softmax(reference[:, :-1], dim=-1)
    picked = log_probs.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    (picked * mask * upstream.double()).sum().backward()

    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(logps.double(), (picked * mask).detach(), atol=tolerance)
    assert ours.grad.dtype == dtype
    assert torch.allclose(ours.grad.double(), reference.grad, atol=tolerance)
