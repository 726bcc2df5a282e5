"""``llamafactory_wspo.packing``: example numbers of packed rows and per-example reductions, against loops."""

import pytest
import torch

from llamafactory_wspo.losses import masked_mean
from llamafactory_wspo.packing import example_index, per_example_count, per_example_mean, per_example_sum, segment_ids


def test_segment_ids_restart_where_positions_restart():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0], [0, 1, 2, 3, 4, 5, 0, 1, 0, 0, 0]])
    expected = [[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4], [0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4]]
    assert segment_ids(position_ids).tolist() == expected
    assert segment_ids(position_ids.unsqueeze(0).expand(3, -1, -1)).tolist() == expected  # M-RoPE: first axis


def test_example_index_numbers_examples_in_row_order():
    # row 0: examples at 0-2 (prompt 0, scored 1-2), 3-5 (prompt 3, scored 4-5), padding 6-7; row 1: one example
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]])
    labels = torch.tensor([[-100, 5, 6, -100, 7, 8, -100, -100], [-100, -100, 1, 2, 3, 4, 5, -100]])
    mask = labels[:, 1:] != -100
    index, count = example_index(mask, segment_ids(position_ids))
    assert count == 3
    expected = [[0, 0, -1, 1, 1, -1, -1], [-1, 2, 2, 2, 2, 2, -1]]
    assert index.tolist() == expected


def test_example_index_without_segments_is_one_example_a_row():
    mask = torch.tensor([[True, False, True], [False, True, True]])
    index, count = example_index(mask)
    assert count == 2 and index.tolist() == [[0, -1, 0], [-1, 1, 1]]
    values = torch.randn(2, 3)
    torch.testing.assert_close(per_example_mean(values, index, count), masked_mean(values, mask))


def test_a_prediction_across_a_boundary_is_refused():
    position_ids = torch.tensor([[0, 1, 0, 1]])
    labels = torch.tensor([[-100, 5, 6, 7]])  # the second example's first token is scored: predicted from the first
    with pytest.raises(ValueError, match="previous example"):
        example_index(labels[:, 1:] != -100, segment_ids(position_ids))


def test_per_example_reductions_match_loops_and_carry_gradients():
    generator = torch.Generator().manual_seed(0)
    index = torch.tensor([[0, 0, -1, 1, 1, 1], [2, -1, 3, 3, -1, -1]])
    values = torch.randn(2, 6, generator=generator, requires_grad=True)
    sums = per_example_sum(values, index, 4)
    means = per_example_mean(values, index, 4)
    for example in range(4):
        picked = values[index == example]
        torch.testing.assert_close(sums[example], picked.sum())
        torch.testing.assert_close(means[example], picked.mean())
    assert per_example_count(index, 4).tolist() == [2.0, 3.0, 1.0, 2.0]
    means.sum().backward()
    expected = torch.where(index >= 0, 1.0 / per_example_count(index, 4)[index.clamp(min=0)], 0.0)
    torch.testing.assert_close(values.grad, expected)
