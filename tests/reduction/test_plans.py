"""Decide, then apply: every paper-mode method's plan is well formed, and applying it is its reduction.

The plan is checked against a naive per-token application (Python loops, float64) written from the
``ReductionPlan`` docstring, so ``apply_plan`` and each method's decisions are tested separately.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from naive_reference import batches
from tor_exp.reduction import ReductionObserver, ReductionPlan, TokenState, apply_plan, build_method, run_reduction
from tor_exp.reduction.base import ReductionConfig, ReductionMethod
from tor_exp.reduction.evit import EViTConfig
from tor_exp.reduction.ltmp import LTMPConfig
from tor_exp.reduction.none import NoneConfig
from tor_exp.reduction.parity import UTRCParityConfig
from tor_exp.reduction.pumer import PuMerConfig
from tor_exp.reduction.utrc import UTRCConfig

SETTINGS = settings(max_examples=60, deadline=None, database=None)

CONFIGS = {
    "utrc": UTRCConfig(),
    "utrc_size_weighted_prune_residual": UTRCConfig(size_weighted=True, residual="hybrid", residual_q=0.3),
    "utrc_similarity_q1": UTRCConfig(q=1.0, hybrid_prune_by="similarity"),
    "evit": EViTConfig(),
    "evit_unclipped": EViTConfig(metric="unclipped"),
    "evit_no_fuse": EViTConfig(fuse=False),
    "pumer": PuMerConfig(),
    "ltmp": LTMPConfig(),
}


def naive_apply(state: TokenState, plan: ReductionPlan, b: int) -> list[dict]:
    """Survivors of row b as {pos, hidden, residual, size}, one token at a time from the plan's fields."""
    n = state.length
    weights = plan.weights if plan.weights is not None else state.valid.float()
    out = []
    for j in range(n):
        if not (state.valid[b, j] and plan.keep[b, j]):
            continue
        token = {"pos": int(state.positions[b, j]), "size": float(state.sizes[b, j])}
        for stream in ("hidden", "residual"):
            x = getattr(state, stream)[b].double()
            members = [j] + [int(plan.src[b, m]) for m in range(plan.src.shape[1])
                             if plan.merged(stream)[b, m] and int(plan.dst[b, m]) == j]
            w = [float(weights[b, i]) for i in members]
            token[stream] = x[members[0]] if len(members) == 1 else sum(wi * x[i] for wi, i in zip(w, members)) / sum(w)
            if stream == "residual":
                token["size"] = sum(float(state.sizes[b, i]) for i in members)
        out.append(token)
    return out


def planned(name: str, state: TokenState, features: dict, keep_ratio: float):
    method = build_method(CONFIGS[name])
    if name == "ltmp":  # thresholds calibrated on this very batch (calibration runs through plan)
        with method.calibrating():
            method.plan(state, features, keep_ratio, 0)
    return method, method.plan(state, features, keep_ratio, 0)


@SETTINGS
@given(batch=batches(sizes=True), keep_ratio=st.floats(0.2, 1.0), name=st.sampled_from(sorted(CONFIGS)))
def test_plans_are_well_formed_and_applying_them_is_the_reduction(batch, keep_ratio, name) -> None:
    state, features, _ = batch
    method, plan = planned(name, state, features, keep_ratio)
    out = method.reduce(state, features, keep_ratio, 0)
    if plan is None:
        assert out is state
        return
    plan.check(state)
    applied = apply_plan(state, plan)
    for key in ("hidden", "residual", "positions", "sizes", "reducible", "valid"):
        assert torch.equal(getattr(applied, key), getattr(out, key)), key
    for b in range(state.batch_size):
        ref = naive_apply(state, plan, b)
        m = int(out.valid[b].sum())
        assert out.positions[b, :m].tolist() == [t["pos"] for t in ref]
        assert out.sizes[b, :m].tolist() == pytest.approx([t["size"] for t in ref])
        for stream in ("hidden", "residual"):
            if ref:
                expected = torch.stack([t[stream] for t in ref])
                torch.testing.assert_close(getattr(out, stream)[b, :m].double(), expected, atol=1e-5, rtol=1e-5)


def test_utrc_plan_hand_worked() -> None:
    # S = (.5, .3, .9, .1, .7, .2): M_A = {3, 5, 1}; hidden hybrid q=.5 by importance prunes the least important
    # retained source (3) and merges the other; the residual stream merges both
    hidden = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 1.0], [1.0, -1.0]])[None]
    state = TokenState.initial(hidden, hidden.clone())
    features = {"ssm_out": torch.tensor([0.5, 0.3, 0.9, 0.1, 0.7, 0.2]).view(1, 6, 1)}
    plan = build_method(UTRCConfig()).plan(state, features, 0.6, 0)  # r = 2
    assert plan.keep.tolist() == [[True, False, True, False, True, True]]
    assert plan.destinations("residual").tolist() == [[-1, 0, -1, 2, -1, -1]]
    assert plan.destinations("hidden").tolist() == [[-1, 0, -1, -1, -1, -1]]


def test_evit_plan_fuses_into_the_last_removed_token_with_importance_weights() -> None:
    state = TokenState.initial(torch.randn(1, 6, 2), torch.randn(1, 6, 2))
    scores = torch.tensor([0.5, 0.3, 0.9, 0.1, 0.7, 0.2])
    plan = build_method(EViTConfig()).plan(state, {"ssm_out": scores.view(1, 6, 1)}, 0.6, 0)
    assert plan.keep.tolist() == [[True, False, True, False, True, True]]  # 5 survives as the fused token
    assert plan.destinations("hidden").tolist() == [[-1, 5, -1, 5, -1, -1]]
    assert torch.equal(plan.destinations("residual"), plan.destinations("hidden"))
    torch.testing.assert_close(plan.weights, torch.tensor([[0.0, 0.3, 0.0, 0.1, 0.0, 0.2]]))


def test_none_plans_nothing() -> None:
    state = TokenState.initial(torch.randn(1, 4, 2), torch.randn(1, 4, 2))
    method = build_method(NoneConfig())
    assert method.makes_plans and method.plan(state, {}, 0.5, 0) is None


class Seen(ReductionObserver):
    """Records every observer call."""

    def __init__(self, log: list):
        self.log = log

    def before_reduce(self, location, state):
        self.log.append(("before", location, state))

    def after_reduce(self, location, before, plan, after):
        self.log.append((location, before, plan, after))


def test_run_reduction_tells_observers_what_was_planned() -> None:
    state = TokenState.initial(torch.randn(2, 8, 3), torch.randn(2, 8, 3))
    features = {"ssm_out": torch.randn(2, 8, 4)}
    method = build_method(UTRCConfig())
    log = []
    after = run_reduction(method, state, features, 0.5, 7, [Seen(log), Seen(log)])
    assert [entry[0] for entry in log] == ["before", "before", 7, 7]
    assert log[0][2] is state and log[2] == log[3]
    location, before, plan, observed = log[2]
    assert (location, before, observed) == (7, state, after)
    assert torch.equal(apply_plan(state, plan).positions, after.positions)
    assert torch.equal(after.hidden, method.reduce(state, features, 0.5, 7).hidden)


def test_run_reduction_decides_then_applies_like_reduce() -> None:
    method = build_method(PuMerConfig())
    state = TokenState.initial(torch.randn(1, 6, 3), torch.randn(1, 6, 3))
    assert torch.equal(run_reduction(method, state, {}, 0.5, 0).hidden, method.reduce(state, {}, 0.5, 0).hidden)


def test_parity_methods_make_no_plans_and_observers_get_none() -> None:
    method = build_method(UTRCParityConfig())
    assert not method.makes_plans
    with pytest.raises(NotImplementedError, match="no ReductionPlan"):
        method.plan(TokenState.initial(torch.randn(1, 8, 3), torch.randn(1, 8, 3)), {}, 0.5, 0)
    state = TokenState.initial(torch.randn(1, 8, 3), torch.randn(1, 8, 3))
    seen = []
    after = run_reduction(method, state, {}, 0.5, 0, [Seen(seen)])
    assert seen[1][2] is None and seen[1][3] is after and after.length < state.length


def test_a_method_only_overriding_reduce_still_works_alone() -> None:
    class Halve(ReductionMethod):
        def reduce(self, state, features, keep_ratio, location):
            return state.keep(torch.arange(state.length)[None] % 2 == 0)[0]

    method = Halve(ReductionConfig())
    state = TokenState.initial(torch.randn(1, 6, 2), torch.randn(1, 6, 2))
    assert not method.makes_plans
    assert run_reduction(method, state, {}, 0.5, 0).positions.tolist() == [[0, 2, 4]]
