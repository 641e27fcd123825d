"""EViT, PuMer and none: hand examples, naive references, invariants."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from naive_reference import assert_row_matches, batches, ref_evit, ref_pumer, row_inputs
from tor_exp.reduction import TokenState, build_method
from tor_exp.reduction.evit import EViTConfig
from tor_exp.reduction.none import NoneConfig
from tor_exp.reduction.pumer import PuMerConfig

SETTINGS = settings(max_examples=30, deadline=None, database=None)

S = torch.tensor([0.5, 0.3, 0.9, 0.1, 0.7, 0.2])
HIDDEN = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 1.0], [1.0, -1.0]])
RESIDUAL = torch.tensor([[10.0, 0.0], [11.0, 0.0], [12.0, 0.0], [13.0, 0.0], [14.0, 0.0], [15.0, 0.0]])


def _hand(cfg, keep_ratio=0.6, scores=S):
    state = TokenState.initial(HIDDEN[None].clone(), RESIDUAL[None].clone())
    features = {"ssm_out": scores.view(1, 6, 1), "mixer_out": HIDDEN[None]}
    return build_method(cfg).reduce(state, features, keep_ratio, 0)


def test_evit_hand_worked_fusion_goes_to_the_last_removed_position() -> None:
    # r = 2 ⇒ keep the top 3 (2, 4, 0), fuse {1, 3, 5} with weights S = (.3, .1, .2) into position 5
    out = _hand(EViTConfig())
    assert out.positions.tolist() == [[0, 2, 4, 5]]
    fused_h = (0.3 * HIDDEN[1] + 0.1 * HIDDEN[3] + 0.2 * HIDDEN[5]) / 0.6
    fused_r = (0.3 * RESIDUAL[1] + 0.1 * RESIDUAL[3] + 0.2 * RESIDUAL[5]) / 0.6
    torch.testing.assert_close(out.hidden[0], torch.stack([HIDDEN[0], HIDDEN[2], HIDDEN[4], fused_h]))
    torch.testing.assert_close(out.residual[0], torch.stack([RESIDUAL[0], RESIDUAL[2], RESIDUAL[4], fused_r]))
    assert out.sizes.tolist() == [[1.0, 1.0, 1.0, 3.0]]


def test_evit_without_fuse_keeps_the_top_tokens() -> None:
    out = _hand(EViTConfig(fuse=False))
    assert out.positions.tolist() == [[0, 1, 2, 4]]
    torch.testing.assert_close(out.hidden[0], HIDDEN[[0, 1, 2, 4]])


def test_evit_zero_weights_fall_back_to_plain_mean() -> None:
    scores = torch.tensor([0.5, 0.0, 0.9, 0.0, 0.7, 0.0])
    out = _hand(EViTConfig(), scores=scores)
    assert out.positions.tolist() == [[0, 2, 4, 5]]
    torch.testing.assert_close(out.hidden[0, 3], HIDDEN[[1, 3, 5]].mean(0))


def test_pumer_hand_worked() -> None:
    # A = {0, 2, 4}, B = {1, 3, 5}; 0→1 (cos .9988), 2→3 (.9950), 4→3 (.7740) ⇒ r = 2 merges 0→1 and 2→3
    out = _hand(PuMerConfig())
    assert out.positions.tolist() == [[1, 3, 4, 5]]
    torch.testing.assert_close(out.hidden[0, :2], torch.stack([(HIDDEN[0] + HIDDEN[1]) / 2, (HIDDEN[2] + HIDDEN[3]) / 2]))
    torch.testing.assert_close(out.residual[0, :2, 0], torch.tensor([10.5, 12.5]))
    assert out.sizes.tolist() == [[2.0, 2.0, 1.0, 1.0]]


def test_none_is_identity() -> None:
    state = TokenState.initial(HIDDEN[None], RESIDUAL[None])
    assert build_method(NoneConfig()).reduce(state, {}, 0.5, 3) is state


@SETTINGS
@given(batch=batches(sizes=True), keep_ratio=st.floats(0.2, 1.0), fuse=st.booleans(),
       metric=st.sampled_from(["clip", "unclipped", "l1", "l2"]), source=st.sampled_from(["ssm_out", "mixer_out"]))
def test_evit_matches_naive_reference(batch, keep_ratio, fuse, metric, source) -> None:
    state, features, _ = batch
    out = build_method(EViTConfig(fuse=fuse, metric=metric, importance_source=source)).reduce(
        state, features, keep_ratio, 0)
    for b in range(state.batch_size):
        row = row_inputs(state, features, b)
        ref = ref_evit(row["hidden"], row["residual"], row["features"][source], row["sizes"], row["reducible"],
                       keep_ratio, metric, fuse)
        assert_row_matches(out, b, ref)


@SETTINGS
@given(batch=batches(sizes=True), keep_ratio=st.floats(0.2, 1.0), source=st.sampled_from(["mixer_out", "ssm_out", "residual"]))
def test_pumer_matches_naive_reference(batch, keep_ratio, source) -> None:
    state, features, _ = batch
    out = build_method(PuMerConfig(similarity_source=source)).reduce(state, features, keep_ratio, 0)
    for b in range(state.batch_size):
        row = row_inputs(state, features, b)
        ref = ref_pumer(row["hidden"], row["residual"], row["features"][source], row["sizes"], row["reducible"],
                        keep_ratio)
        assert_row_matches(out, b, ref)


@SETTINGS
@given(batch=batches(), keep_ratio=st.floats(0.2, 1.0), which=st.sampled_from(["evit", "pumer"]))
def test_baseline_invariants(batch, keep_ratio, which) -> None:
    state, features, lengths = batch
    cfg = EViTConfig() if which == "evit" else PuMerConfig()
    out = build_method(cfg).reduce(state, features, keep_ratio, 0)
    for b in range(state.batch_size):
        n = int(state.reducible[b].sum())
        r = n - int(torch.ceil(torch.tensor(n * keep_ratio - 1e-9)))
        if which == "pumer":
            r = min(r, n // 2)
        kept = int(out.valid[b].sum())
        assert kept == lengths[b] - r
        pos = out.positions[b, :kept]
        assert (pos[1:] > pos[:-1]).all()
        for p in torch.nonzero(state.valid[b] & ~state.reducible[b]).flatten().tolist():
            j = pos.tolist().index(p)
            assert torch.equal(out.hidden[b, j], state.hidden[b, p])
            assert torch.equal(out.residual[b, j], state.residual[b, p])
        assert (out.hidden[b, :kept].abs() < 1e3).all() and (out.residual[b, :kept].abs() < 1e3).all()
        assert out.sizes[b].sum().item() == pytest.approx(state.sizes[b].sum().item())


@SETTINGS
@given(batch=batches(), keep_ratio=st.floats(0.2, 1.0), which=st.sampled_from(["evit", "pumer"]))
def test_baseline_rows_are_independent(batch, keep_ratio, which) -> None:
    state, features, lengths = batch
    method = build_method(EViTConfig() if which == "evit" else PuMerConfig())
    out = method.reduce(state, features, keep_ratio, 0)
    for b in range(state.batch_size):
        n = lengths[b]
        alone_state = TokenState(
            *(getattr(state, k)[b : b + 1, :n] for k in ("hidden", "residual", "positions", "sizes", "reducible", "valid"))
        )
        alone = method.reduce(alone_state, {k: v[b : b + 1, :n] for k, v in features.items()}, keep_ratio, 0)
        m = int(alone.valid.sum())
        assert torch.equal(out.positions[b, :m], alone.positions[0, :m])
        torch.testing.assert_close(out.hidden[b, :m], alone.hidden[0, :m])
        torch.testing.assert_close(out.residual[b, :m], alone.residual[0, :m])


@pytest.mark.parametrize("cfg", [EViTConfig(), EViTConfig(metric="unclipped"), PuMerConfig()])
def test_all_zero_tokens_give_no_nan(cfg) -> None:
    state = TokenState.initial(torch.zeros(2, 9, 4), torch.zeros(2, 9, 4))
    out = build_method(cfg).reduce(state, {"ssm_out": torch.zeros(2, 9, 6)}, 0.5, 0)
    assert torch.isfinite(out.hidden).all() and torch.isfinite(out.residual).all()
    assert out.valid.sum(1).tolist() == [5, 5]  # r = 9 - ceil(4.5) = 4 (≤ ⌊9/2⌋ for pumer)
