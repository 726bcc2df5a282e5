"""WPO weights against an independent float64 computation from explicit probabilities."""

import numpy as np
import pytest
import torch

from llamafactory_wspo.losses import (
    IGNORE_INDEX,
    policy_logps_and_alignment,
    wpo_pair_weight,
    wpo_sequence_weight,
    wpo_unpaired_weights,
)


def _reference_weight(logits: np.ndarray, labels: np.ndarray, alignment: str) -> list[float]:
    out = []
    for row_logits, row_labels in zip(logits.astype(np.float64), labels):
        terms = []
        for t in range(len(row_labels) - 1):
            if row_labels[t + 1] == IGNORE_INDEX:
                continue

            p = np.exp(row_logits[t] - row_logits[t].max())
            p /= p.sum()
            log_p = np.log(p[row_labels[t + 1]])
            if alignment == "sampled":
                terms.append(log_p - np.log((p**2).sum()))
            elif alignment == "greedy":
                terms.append(log_p - np.log(p.max()))
            else:
                terms.append(log_p)

        out.append(float(np.exp(np.mean(terms))))

    return out


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 12, 17)).astype(np.float32) * 2
    labels = rng.integers(0, 17, size=(4, 12))
    labels[:, :5] = IGNORE_INDEX
    labels[1, 10:] = IGNORE_INDEX
    return logits, labels


@pytest.mark.parametrize("alignment", ["sampled", "greedy", "none"])
@pytest.mark.parametrize("chunk_size", [3, 512])
def test_sequence_weights(batch, alignment, chunk_size):
    logits, labels = batch
    logps, aligned, mask = policy_logps_and_alignment(
        torch.from_numpy(logits), torch.from_numpy(labels), alignment, chunk_size=chunk_size
    )
    weights = wpo_sequence_weight(aligned, mask)
    assert weights.tolist() == pytest.approx(_reference_weight(logits, labels, alignment), rel=1e-5)
    assert not weights.requires_grad


def test_logps_keep_their_gradient_and_weights_do_not(batch):
    logits, labels = batch
    logits = torch.from_numpy(logits).requires_grad_(True)
    logps, aligned, mask = policy_logps_and_alignment(logits, torch.from_numpy(labels), "sampled", chunk_size=4)
    assert logps.requires_grad and not aligned.requires_grad
    logps.sum().backward()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "weighting, expected",
    [("pair", [0.5 * 0.8, 1.0, 0.9 * 0.2]), ("chosen", [0.5, 1.0, 0.9]), ("rejected", [0.8, 1.0, 0.2])],
)
def test_pair_weight_variants_are_clamped_at_one(weighting, expected):
    chosen = torch.tensor([0.5, 3.0, 0.9], requires_grad=True)
    rejected = torch.tensor([0.8, 2.0, 0.2])
    weight = wpo_pair_weight(chosen, rejected, weighting)
    assert weight.tolist() == pytest.approx(expected)
    assert not weight.requires_grad


def test_unpaired_weights_sum_to_one_per_group():
    weights = torch.tensor([0.2, 0.6, 0.1, 0.3, 0.5])
    desirable = torch.tensor([True, True, False, False, True])
    out = wpo_unpaired_weights(weights, desirable)
    assert out[desirable].sum().item() == pytest.approx(1.0)
    assert out[~desirable].sum().item() == pytest.approx(1.0)
    assert out.tolist() == pytest.approx([0.2 / 1.3, 0.6 / 1.3, 0.1 / 0.4, 0.3 / 0.4, 0.5 / 1.3])


@pytest.mark.slow  # 1 GiB of logits in a subprocess
def test_weight_computation_memory_on_long_sequence_large_vocab():
    r"""Peak RSS of the weight computation stays far below a second copy of the logits."""
    import subprocess
    import sys

    code = """
import resource, torch
from llamafactory_wspo.losses import policy_logps_and_alignment, wpo_sequence_weight
torch.manual_seed(0)
logits = torch.randn(1, 4096, 65536)  # 1 GiB of float32 logits
labels = torch.randint(0, 65536, (1, 4096)); labels[:, :100] = -100
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_, aligned, mask = policy_logps_and_alignment(logits, labels, "sampled")
weights = wpo_sequence_weight(aligned, mask)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024 / logits.numel() / logits.element_size())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    extra = float(proc.stdout.strip().splitlines()[-1])
    assert extra < 0.5  # a log-softmax or a probability tensor alone would add 1.0
