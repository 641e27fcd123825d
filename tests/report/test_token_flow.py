"""Token-flow probe: recovers exactly which tokens a reduction pruned and which it merged into which."""
from __future__ import annotations

import math

import pytest
import torch

from tor_exp.reduction.base import ReductionConfig, ReductionMethod
from tor_exp.reduction.state import TokenState
from tor_exp.reporting.token_flow import FlowRecorder, describe, flow_matrix, recording, trace_token_flow


class MergeFirstPairPruneFourth(ReductionMethod):
    """Hand-made method: merges row index 1 into index 0 (mean), prunes index 3 when present."""

    def reduce(self, state, features, keep_ratio, location):
        n = state.length
        keep = torch.ones(state.positions.shape, dtype=torch.bool)
        keep[:, 1] = False
        if n > 3:
            keep[:, 3] = False
        hidden, residual = state.hidden.clone(), state.residual.clone()
        hidden[:, 0] = (hidden[:, 0] + hidden[:, 1]) / 2
        residual[:, 0] = (residual[:, 0] + residual[:, 1]) / 2
        out, _ = state.replace(hidden=hidden, residual=residual).keep(keep)
        return out


class PrunesSmallestHidden(ReductionMethod):
    """Decides from the stream values themselves: the probe cannot reproduce its decisions."""

    def reduce(self, state, features, keep_ratio, location):
        drop = state.hidden.norm(dim=-1).argmin(dim=1)
        keep = torch.ones(state.positions.shape, dtype=torch.bool)
        keep[torch.arange(state.batch_size), drop] = False
        return state.keep(keep)[0]


def test_hand_worked_flow_over_two_locations():
    torch.manual_seed(0)
    h = torch.randn(1, 5, 8)
    state = TokenState.initial(h, h.clone())
    rec = FlowRecorder(MergeFirstPairPruneFourth(ReductionConfig()))
    s1 = rec.reduce(state, {"mixer_out": h}, 0.5, 4)
    s2 = rec.reduce(s1, {"mixer_out": s1.hidden}, 0.5, 9)
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
    # the real result is untouched by recording
    assert torch.allclose(s2.residual[0, 0], (((h[0, 0] + h[0, 1]) / 2) + h[0, 2]) / 2)


def test_methods_that_read_the_streams_are_refused():
    h = torch.tensor([[[3.0, 0.0], [0.1, 0.0], [2.0, 1.0]]])
    rec = FlowRecorder(PrunesSmallestHidden(ReductionConfig()))
    with pytest.raises(RuntimeError, match="cannot be recovered"):
        rec.reduce(TokenState.initial(h, h.clone()), {"mixer_out": h}, 0.5, 0)


def test_recording_restores_the_method():
    method = MergeFirstPairPruneFourth(ReductionConfig())
    with recording(method):
        assert "reduce" in vars(method)
    assert "reduce" not in vars(method)


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
    from tor_exp.models.flops import Schedule
    from tor_exp.reduction import build_method
    from tor_exp.reduction.utrc import UTRCConfig

    model, ids = tiny_model
    method = build_method(UTRCConfig(target_flops=None, keep_ratio=0.8))
    flows, out = trace_token_flow(model, ids, method, Schedule([2, 5], 0.8))
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
