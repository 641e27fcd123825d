"""Token flow: reads each reduction's plan to show which tokens were pruned and which merged into which."""
from __future__ import annotations

import math

import pytest
import torch

from tor_exp.reduction import ReductionPlan, run_reduction
from tor_exp.reduction.base import ReductionConfig, ReductionMethod
from tor_exp.reduction.state import TokenState
from tor_exp.reporting.token_flow import FlowRecorder, NoPlanError, describe, flow_matrix, trace_token_flow


class MergeFirstPairPruneFourth(ReductionMethod):
    """Hand-made plan: merges row index 1 into index 0 (mean, both streams), prunes index 3 when present."""

    def plan(self, state, features, keep_ratio, location):
        keep = torch.ones(state.positions.shape, dtype=torch.bool)
        keep[:, 1] = False
        if state.length > 3:
            keep[:, 3] = False
        yes = torch.ones(state.batch_size, 1, dtype=torch.bool)
        return ReductionPlan(keep, torch.ones_like(yes, dtype=torch.long), torch.zeros_like(yes, dtype=torch.long),
                             yes, yes)


class HybridOnSecond(ReductionMethod):
    """Index 1 merges into 0 on the residual stream only (pruned from the hidden stream)."""

    def plan(self, state, features, keep_ratio, location):
        keep = torch.ones(state.positions.shape, dtype=torch.bool)
        keep[:, 1] = False
        one = torch.ones(state.batch_size, 1, dtype=torch.long)
        return ReductionPlan(keep, one, one - 1, torch.zeros_like(one, dtype=torch.bool), one.bool())


class DropsLast(ReductionMethod):
    """Overrides reduce only, like the parity methods: no plan to show."""

    def reduce(self, state, features, keep_ratio, location):
        keep = torch.ones(state.positions.shape, dtype=torch.bool)
        keep[:, -1] = False
        return state.keep(keep)[0]


def test_hand_worked_flow_over_two_locations():
    torch.manual_seed(0)
    h = torch.randn(1, 5, 8)
    state = TokenState.initial(h, h.clone())
    method, rec = MergeFirstPairPruneFourth(ReductionConfig()), FlowRecorder()
    s1 = run_reduction(method, state, {"mixer_out": h}, 0.5, 4, [rec])
    s2 = run_reduction(method, s1, {"mixer_out": s1.hidden}, 0.5, 9, [rec])
    f1, f2 = rec.flows
    assert (f1.layer, f1.positions_in, f1.positions_out) == (4, [0, 1, 2, 3, 4], [0, 2, 4])
    for stream in ("hidden", "residual"):
        assert f1.members[stream] == {0: [0, 1], 2: [2], 4: [4]}
        assert f1.removed[stream] == {1: 0, 3: None}
    # second location: input row index 1 is original position 2
    assert (f2.positions_in, f2.positions_out) == ([0, 2, 4], [0, 4])
    assert f2.members["residual"] == {0: [0, 2], 4: [4]} and f2.removed["hidden"] == {2: 0}
    assert f1.groups == {0: [0, 1], 2: [2], 4: [4]}
    assert f2.groups == {0: [0, 1, 2], 4: [4]}
    assert flow_matrix(rec.flows, 5).tolist() == [[0, 0, 2, -1, 4], [0, 0, 0, -1, 4]]
    tokens = list("abcde")
    assert describe(rec.flows, tokens) == ["layer 4: 5→3 tokens; 'b'@1→'a'@0, 'd'@3 pruned",
                                           "layer 9: 3→2 tokens; 'c'@2→'a'@0"]
    # the real result is untouched by observing
    assert torch.allclose(s2.residual[0, 0], (((h[0, 0] + h[0, 1]) / 2) + h[0, 2]) / 2)


def test_per_stream_decisions_are_shown_per_stream():
    state = TokenState.initial(torch.randn(1, 3, 2), torch.randn(1, 3, 2))
    rec = FlowRecorder()
    run_reduction(HybridOnSecond(ReductionConfig()), state, {}, 0.5, 0, [rec])
    (flow,) = rec.flows
    assert flow.removed == {"hidden": {1: None}, "residual": {1: 0}}
    assert flow.members == {"hidden": {0: [0], 2: [2]}, "residual": {0: [0, 1], 2: [2]}}


def test_a_location_with_nothing_to_do_is_an_identity_flow():
    state = TokenState.initial(torch.randn(1, 3, 2), torch.randn(1, 3, 2))
    rec = FlowRecorder()
    rec.after_reduce(6, state, None, state)
    assert rec.flows[0].removed == {"hidden": {}, "residual": {}}
    assert rec.flows[0].groups == {0: [0], 1: [1], 2: [2]}


def test_methods_without_plans_are_refused_clearly():
    h = torch.randn(1, 4, 2)
    with pytest.raises(NoPlanError, match="cannot show 'parity'.*make no ReductionPlan"):
        run_reduction(DropsLast(ReductionConfig()), TokenState.initial(h, h.clone()), {}, 0.5, 0,
                      [FlowRecorder("parity")])


@pytest.fixture(scope="module")
def tiny_model():
    from tor_exp.models import load_model
    from tor_exp.models.config import ModelConfig, TinyModelConfig

    torch.manual_seed(0)
    model, tok = load_model(ModelConfig(name="tiny_mamba2", n_layer=8, locations=[2, 5],
                                        tiny=TinyModelConfig(d_model=32, n_layer=8, chunk_size=16)))
    ids = tok("the cat sat on the mat, the dog sat on the log.", return_tensors="pt")["input_ids"]
    return model, ids


def test_utrc_flow_on_the_tiny_model(tiny_model):
    from tor_exp.models import reduced_forward
    from tor_exp.models.schedule import Schedule
    from tor_exp.models.patching import is_patched
    from tor_exp.reduction import build_method
    from tor_exp.reduction.utrc import UTRCConfig

    model, ids = tiny_model
    method = build_method(UTRCConfig(target_flops=None, keep_ratio=0.8))
    flows, out = trace_token_flow(model, ids, method, Schedule([2, 5], 0.8))
    assert not is_patched(model)  # patched for the trace only
    with torch.no_grad():  # observing does not change what the model computes
        plain = reduced_forward(model, ids, method=method, schedule=Schedule([2, 5], 0.8))
    assert torch.equal(plain.logits, out.logits) and torch.equal(plain.positions, out.positions)
    assert [f.layer for f in flows] == [2, 5]
    n = ids.shape[1]
    assert flows[0].positions_in == list(range(n))
    assert flows[-1].positions_out == out.positions[0][out.valid[0]].tolist()
    for f in flows:
        n_in = len(f.positions_in)
        r = n_in - math.ceil(0.8 * n_in - 1e-9)
        assert len(f.positions_out) == n_in - r
        assert set(f.removed["hidden"]) == set(f.positions_in) - set(f.positions_out)
        # residual stream: merge only → every removed token lands in a survivor
        assert all(dst in f.positions_out for dst in f.removed["residual"].values())
        # hidden stream: hybrid q=0.5 → ⌊r/2⌋ pruned, the rest merged into the same destinations as the residual
        pruned = [p for p, dst in f.removed["hidden"].items() if dst is None]
        assert len(pruned) == r // 2
        for p, dst in f.removed["hidden"].items():
            if dst is not None:
                assert dst == f.removed["residual"][p]
        # cumulative groups partition the original tokens (nothing is lost from the residual stream)
        originals = sorted(o for g in f.groups.values() for o in g)
        assert originals == list(range(n))
    assert (flow_matrix(flows, n) >= 0).all()


def test_parity_methods_are_refused_before_running(tiny_model):
    from tor_exp.models.schedule import Schedule
    from tor_exp.reduction import build_method
    from tor_exp.reduction.parity import PuMerParityConfig

    model, ids = tiny_model
    with pytest.raises(NoPlanError, match="cannot show 'pumer_official'"):
        trace_token_flow(model, ids, build_method(PuMerParityConfig()), Schedule([2, 5], 0.8))
