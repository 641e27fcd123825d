"""Shared helpers: importance metrics, masked ranking, safe cosine similarity, apply_reduction."""
from __future__ import annotations

import math

import pytest
import torch

from tor_exp.errors import ConfigError
from tor_exp.reduction import TokenState
from tor_exp.reduction.importance import (
    apply_reduction,
    compact_indices,
    cosine_similarity,
    masked_argsort,
    ranks,
    token_importance,
)


def test_importance_metrics_on_hand_values() -> None:
    y = torch.tensor([[[1.0, -3.0, 2.0, 0.0]]])
    assert token_importance(y, "clip").item() == pytest.approx(3.0 / 4)
    assert token_importance(y, "unclipped").item() == pytest.approx(0.0)
    assert token_importance(y, "l1").item() == pytest.approx(6.0 / 4)
    assert token_importance(y, "l2").item() == pytest.approx(math.sqrt(14.0))
    with pytest.raises(ConfigError, match="reduction.metric"):
        token_importance(y, "l3")


def test_importance_is_float32_for_half_inputs() -> None:
    y = torch.tensor([[[1.0, 2.0]]], dtype=torch.bfloat16)
    assert token_importance(y, "clip").dtype == torch.float32


def test_masked_argsort_puts_masked_tokens_last_and_breaks_ties_by_position() -> None:
    scores = torch.tensor([[3.0, 1.0, float("-inf"), 1.0, 0.5, float("inf")]])
    mask = torch.tensor([[True, True, False, True, False, True]])
    # the order among masked-out tokens is unspecified: only the first four (the masked-in ones) matter
    assert masked_argsort(scores, mask).tolist()[0][:4] == [1, 3, 0, 5]
    assert masked_argsort(scores, mask, descending=True).tolist()[0][:4] == [5, 0, 1, 3]
    order = torch.tensor([[1, 3, 0, 5, 2, 4]])
    assert ranks(order).tolist() == [[2, 0, 4, 1, 5, 3]]


def test_compact_indices_pads_ragged_rows() -> None:
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    idx, valid = compact_indices(mask)
    assert idx.tolist() == [[1, 2], [0, 0]]
    assert valid.tolist() == [[True, True], [True, False]]


def test_cosine_similarity_of_zero_tokens_is_zero_not_nan() -> None:
    a = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    b = torch.tensor([[[0.0, 0.0], [6.0, 8.0], [-4.0, 3.0]]])
    sim = cosine_similarity(a, b)
    assert torch.isfinite(sim).all()
    torch.testing.assert_close(sim, torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]))


def _state() -> TokenState:
    hidden = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    residual = 100 + hidden
    return TokenState.initial(hidden, residual)


def test_apply_reduction_plain_mean_prune_and_order() -> None:
    state = _state().replace(sizes=torch.tensor([[1.0, 2.0, 1.0, 3.0, 1.0, 1.0]]))
    # sources 4 and 1 both merge into 3 in the residual; in the hidden stream 4 merges and 1 is pruned
    src = torch.tensor([[4, 1, 0]])
    valid = torch.tensor([[True, True, False]])
    dst = torch.tensor([[3, 3, 5]])
    out, extra = apply_reduction(
        state, src, valid, dst,
        merge_hidden=torch.tensor([[True, False, True]]),
        merge_residual=torch.tensor([[True, True, True]]),
    )
    assert out.positions.tolist() == [[0, 2, 3, 5]]
    # hidden[3] = mean(h3, h4) = mean([6,7],[8,9]); residual[3] = mean(r3, r4, r1)
    torch.testing.assert_close(out.hidden[0, 2], torch.tensor([7.0, 8.0]))
    torch.testing.assert_close(out.residual[0, 2], torch.tensor([(106 + 108 + 102) / 3, (107 + 109 + 103) / 3]))
    torch.testing.assert_close(out.hidden[0, 3], state.hidden[0, 5])  # invalid slot never applied
    assert out.sizes.tolist() == [[1.0, 1.0, 6.0, 1.0]]  # 3 + 1 (pos 4) + 2 (pos 1)
    assert extra["hidden_sizes"].tolist() == [[1.0, 1.0, 4.0, 1.0]]


def test_apply_reduction_size_weighted_mean() -> None:
    state = _state().replace(sizes=torch.tensor([[1.0, 3.0, 1.0, 1.0, 1.0, 1.0]]))
    src, dst = torch.tensor([[1]]), torch.tensor([[0]])
    yes = torch.tensor([[True]])
    out, _ = apply_reduction(state, src, yes, dst, yes, yes, size_weighted=True)
    # (1·[0,1] + 3·[2,3]) / 4
    torch.testing.assert_close(out.hidden[0, 0], torch.tensor([1.5, 2.5]))
    assert out.sizes[0, 0].item() == 4.0
