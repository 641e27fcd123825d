"""Shared helpers: importance metrics, masked ranking, safe cosine similarity, apply_plan."""
from __future__ import annotations

import math

import pytest
import torch

from tor_exp.errors import ConfigError
from tor_exp.reduction import ReductionPlan, TokenState, apply_plan
from tor_exp.reduction.importance import token_importance
from tor_exp.reduction.matching import compact_indices, cosine_similarity, masked_argsort, ranks, scatter_mask


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
    assert torch.equal(scatter_mask(idx, valid, 4), mask)


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


def test_apply_plan_plain_mean_prune_and_order() -> None:
    state = _state().replace(sizes=torch.tensor([[1.0, 2.0, 1.0, 3.0, 1.0, 1.0]]))
    # 4 and 1 are removed; both merge into 3 in the residual; in the hidden stream 4 merges and 1 is pruned;
    # the third slot is padding (merged on neither stream)
    plan = ReductionPlan(
        keep=torch.tensor([[True, False, True, True, False, True]]),
        src=torch.tensor([[4, 1, 0]]),
        dst=torch.tensor([[3, 3, 5]]),
        merge_hidden=torch.tensor([[True, False, False]]),
        merge_residual=torch.tensor([[True, True, False]]),
    )
    plan.check(state)
    out = apply_plan(state, plan)
    assert out.positions.tolist() == [[0, 2, 3, 5]]
    # hidden[3] = mean(h3, h4) = mean([6,7],[8,9]); residual[3] = mean(r3, r4, r1)
    torch.testing.assert_close(out.hidden[0, 2], torch.tensor([7.0, 8.0]))
    torch.testing.assert_close(out.residual[0, 2], torch.tensor([(106 + 108 + 102) / 3, (107 + 109 + 103) / 3]))
    torch.testing.assert_close(out.hidden[0, 3], state.hidden[0, 5])  # padding slot never applied
    assert out.sizes.tolist() == [[1.0, 1.0, 6.0, 1.0]]  # 3 + 1 (pos 4) + 2 (pos 1)
    assert plan.destinations("hidden").tolist() == [[-1, -1, -1, -1, 3, -1]]
    assert plan.destinations("residual").tolist() == [[-1, 3, -1, -1, 3, -1]]


def test_apply_plan_size_weighted_mean() -> None:
    state = _state().replace(sizes=torch.tensor([[1.0, 3.0, 1.0, 1.0, 1.0, 1.0]]))
    yes = torch.tensor([[True]])
    keep = torch.tensor([[True, False, True, True, True, True]])
    out = apply_plan(state, ReductionPlan(keep, torch.tensor([[1]]), torch.tensor([[0]]), yes, yes, state.sizes))
    # (1·[0,1] + 3·[2,3]) / 4
    torch.testing.assert_close(out.hidden[0, 0], torch.tensor([1.5, 2.5]))
    assert out.sizes[0, 0].item() == 4.0


def test_apply_plan_none_and_pruning_only() -> None:
    state = _state()
    assert apply_plan(state, None) is state
    keep = torch.tensor([[True, False, True, False, True, True]])
    out = apply_plan(state, ReductionPlan.pruning(keep))
    assert out.positions.tolist() == [[0, 2, 4, 5]]
    assert torch.equal(out.hidden[0], state.hidden[0, [0, 2, 4, 5]])
    assert out.sizes.tolist() == [[1.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize("broken, message", [
    ({"keep": torch.tensor([[True, True, True, True, False, True]])}, "survives"),  # merged source kept
    ({"dst": torch.tensor([[1, 1]])}, "into a token that is removed"),  # chain: 4 → 1, itself removed
    ({"src": torch.tensor([[4, 4]]), "merge_hidden": torch.tensor([[True, True]])}, "twice on the hidden"),
    ({"weights": torch.full((1, 6), -1.0)}, "non-negative"),
])
def test_plan_check_rejects_malformed_plans(broken, message) -> None:
    state = _state()
    fields = dict(keep=torch.tensor([[True, False, True, True, False, True]]), src=torch.tensor([[4, 1]]),
                  dst=torch.tensor([[3, 3]]), merge_hidden=torch.tensor([[True, False]]),
                  merge_residual=torch.tensor([[True, True]]), weights=None)
    ReductionPlan(**fields).check(state)
    with pytest.raises(ValueError, match=message):
        ReductionPlan(**(fields | broken)).check(state)
