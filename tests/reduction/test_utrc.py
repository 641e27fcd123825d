"""Paper-mode UTRC: a hand-worked example, a naive reference, and invariants (hypothesis)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from naive_reference import assert_row_matches, batches, ref_utrc, row_inputs
from tor_exp.reduction import TokenState, build_method
from tor_exp.reduction.utrc import UTRCConfig

SETTINGS = settings(max_examples=30, deadline=None, database=None)

# ------------------------------------------------------------------------------------------ hand example
# N = 6, ρ = 0.6 ⇒ keep ceil(3.6) = 4, r = 2. S = [.5, .3, .9, .1, .7, .2] ⇒ M_A = {3, 5, 1}, M_B = {0, 2, 4}.
# Similarity on the hidden stream: 1→0 (cos .9988), 3→2 (cos .9950), 5→0 (cos .7071) ⇒ retain 1 and 3.
S = torch.tensor([0.5, 0.3, 0.9, 0.1, 0.7, 0.2])
HIDDEN = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 1.0], [1.0, -1.0]])
RESIDUAL = torch.tensor([[10.0, 0.0], [11.0, 0.0], [12.0, 0.0], [13.0, 0.0], [14.0, 0.0], [15.0, 0.0]])


def _hand(**cfg) -> TokenState:
    state = TokenState.initial(HIDDEN[None].clone(), RESIDUAL[None].clone())
    features = {"ssm_out": S.view(1, 6, 1), "mixer_out": HIDDEN[None]}
    return build_method(UTRCConfig(**cfg)).reduce(state, features, 0.6, 0)


def test_hand_worked_hybrid_prunes_least_important_and_merges_the_other() -> None:
    out = _hand()  # hidden hybrid q=.5 by importance: prune 3 (S=.1), merge 1 into 0; residual merges both
    assert out.positions.tolist() == [[0, 2, 4, 5]]
    torch.testing.assert_close(out.hidden[0], torch.tensor([[1.5, 0.05], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]]))
    torch.testing.assert_close(out.residual[0, :, 0], torch.tensor([10.5, 12.5, 14.0, 15.0]))
    assert out.sizes.tolist() == [[2.0, 2.0, 1.0, 1.0]]


def test_hand_worked_hybrid_prune_by_similarity_prunes_the_most_similar() -> None:
    out = _hand(hybrid_prune_by="similarity")  # prune 1 (cos .9988), merge 3 into 2
    assert out.positions.tolist() == [[0, 2, 4, 5]]
    torch.testing.assert_close(out.hidden[0, :2], torch.tensor([[1.0, 0.0], [0.05, 1.0]]))
    torch.testing.assert_close(out.residual[0, :, 0], torch.tensor([10.5, 12.5, 14.0, 15.0]))


def test_hand_worked_prune_and_merge_streams() -> None:
    out = _hand(hidden="prune", residual="prune")
    torch.testing.assert_close(out.hidden[0], HIDDEN[[0, 2, 4, 5]])
    torch.testing.assert_close(out.residual[0], RESIDUAL[[0, 2, 4, 5]])
    assert out.sizes.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    out = _hand(hidden="merge", size_weighted=True)
    torch.testing.assert_close(out.hidden[0, :2], torch.tensor([[1.5, 0.05], [0.05, 1.0]]))


def test_protected_token_is_never_a_source_or_destination() -> None:
    protected = torch.tensor([[False, True, False, False, False, False]])  # protect token 1
    state = TokenState.initial(HIDDEN[None].clone(), RESIDUAL[None].clone(), protected=protected)
    features = {"ssm_out": S.view(1, 6, 1), "mixer_out": HIDDEN[None]}
    out = build_method(UTRCConfig()).reduce(state, features, 0.6, 0)
    # n = 5 reducible ⇒ keep 3, r = 2; M_A = {3, 5}, M_B = {0, 2, 4}: both sources go, 1 stays untouched
    assert out.positions.tolist() == [[0, 1, 2, 4]]
    torch.testing.assert_close(out.hidden[0, 1], HIDDEN[1])
    torch.testing.assert_close(out.residual[0, 1], RESIDUAL[1])


# ------------------------------------------------------------------------------------------ reference
utrc_cfgs = st.fixed_dictionaries({
    "metric": st.sampled_from(["clip", "unclipped", "l1", "l2"]),
    "importance_source": st.sampled_from(["ssm_out", "mixer_out"]),
    "similarity_source": st.sampled_from(["mixer_out", "ssm_out", "residual"]),
    "hidden": st.sampled_from(["hybrid", "prune", "merge"]),
    "q": st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    "hybrid_prune_by": st.sampled_from(["importance", "similarity"]),
    "residual": st.sampled_from(["merge", "prune", "hybrid"]),
    "residual_q": st.sampled_from([0.5, 0.7]),
    "size_weighted": st.booleans(),
})


@SETTINGS
@given(batch=batches(sizes=True), keep_ratio=st.floats(0.3, 1.0), cfg=utrc_cfgs)
def test_utrc_matches_naive_reference(batch, keep_ratio, cfg) -> None:
    state, features, lengths = batch
    out = build_method(UTRCConfig(**cfg)).reduce(state, features, keep_ratio, 0)
    for b in range(state.batch_size):
        row = row_inputs(state, features, b)
        ref = ref_utrc(
            row["hidden"], row["residual"], row["features"][cfg["importance_source"]],
            row["features"][cfg["similarity_source"]], row["sizes"], row["reducible"], keep_ratio, cfg,
        )
        assert_row_matches(out, b, ref)


# ------------------------------------------------------------------------------------------ invariants
def _run(state, features, keep_ratio, **cfg):
    return build_method(UTRCConfig(**cfg)).reduce(state, features, keep_ratio, 0)


@SETTINGS
@given(batch=batches(), keep_ratio=st.floats(0.3, 1.0))
def test_order_count_protection_padding_and_sizes(batch, keep_ratio) -> None:
    state, features, lengths = batch
    out = _run(state, features, keep_ratio)
    for b in range(state.batch_size):
        n = int(state.reducible[b].sum())
        r = min(n - int(torch.ceil(torch.tensor(n * keep_ratio - 1e-9))), n // 2)
        kept = int(out.valid[b].sum())
        assert kept == lengths[b] - r  # exact removal count
        pos = out.positions[b, :kept]
        assert (pos[1:] > pos[:-1]).all()  # original order
        assert (out.positions[b, kept:] == -1).all() and not out.reducible[b, kept:].any()
        # protected tokens survive untouched (never sources, never destinations)
        for p in torch.nonzero(state.valid[b] & ~state.reducible[b]).flatten().tolist():
            j = pos.tolist().index(p)
            assert torch.equal(out.hidden[b, j], state.hidden[b, p])
            assert torch.equal(out.residual[b, j], state.residual[b, p])
            assert not out.reducible[b, j]
        # padding never leaks into real tokens (it is filled with 1e4)
        assert (out.hidden[b, :kept].abs() < 1e3).all() and (out.residual[b, :kept].abs() < 1e3).all()
        # residual merge ⇒ sizes are conserved
        assert out.sizes[b].sum().item() == pytest.approx(state.sizes[b].sum().item())


@SETTINGS
@given(batch=batches(), keep_ratio=st.floats(0.3, 1.0))
def test_both_streams_lose_the_same_positions(batch, keep_ratio) -> None:
    state, features, _ = batch
    out = _run(state, features, keep_ratio, hidden="prune", residual="prune")
    for b in range(state.batch_size):
        kept = int(out.valid[b].sum())
        pos = out.positions[b, :kept]
        assert torch.equal(out.hidden[b, :kept], state.hidden[b, pos])
        assert torch.equal(out.residual[b, :kept], state.residual[b, pos])


@SETTINGS
@given(batch=batches(), keep_ratio=st.floats(0.3, 1.0), prune_by=st.sampled_from(["importance", "similarity"]))
def test_q1_is_prune_only_and_q0_is_merge_only(batch, keep_ratio, prune_by) -> None:
    state, features, _ = batch
    for q, mode in ((1.0, "prune"), (0.0, "merge")):
        hybrid = _run(state, features, keep_ratio, q=q, hybrid_prune_by=prune_by)
        single = _run(state, features, keep_ratio, hidden=mode)
        assert torch.equal(hybrid.positions, single.positions)
        assert torch.equal(hybrid.hidden, single.hidden) and torch.equal(hybrid.residual, single.residual)


@SETTINGS
@given(batch=batches(), keep_ratio=st.floats(0.3, 1.0))
def test_each_row_equals_running_it_alone(batch, keep_ratio) -> None:
    state, features, lengths = batch
    out = _run(state, features, keep_ratio)
    for b in range(state.batch_size):
        n = lengths[b]
        alone_state = TokenState(
            *(getattr(state, k)[b : b + 1, :n] for k in ("hidden", "residual", "positions", "sizes", "reducible", "valid"))
        )
        alone = _run(alone_state, {k: v[b : b + 1, :n] for k, v in features.items()}, keep_ratio)
        m = int(alone.valid.sum())
        assert int(out.valid[b].sum()) == m
        assert torch.equal(out.positions[b, :m], alone.positions[0, :m])
        torch.testing.assert_close(out.hidden[b, :m], alone.hidden[0, :m])
        torch.testing.assert_close(out.residual[b, :m], alone.residual[0, :m])


def test_all_zero_tokens_give_no_nan() -> None:
    state = TokenState.initial(torch.zeros(2, 9, 4), torch.zeros(2, 9, 4))
    features = {"ssm_out": torch.zeros(2, 9, 6)}
    for hidden in ("hybrid", "merge", "prune"):
        out = _run(state, features, 0.5, hidden=hidden, size_weighted=True)
        assert torch.isfinite(out.hidden).all() and torch.isfinite(out.residual).all()
        assert out.valid.sum(1).tolist() == [5, 5]


def test_missing_ssm_out_names_the_key() -> None:
    from tor_exp.errors import ConfigError

    state = TokenState.initial(torch.randn(1, 6, 4), torch.randn(1, 6, 4))
    with pytest.raises(ConfigError, match="reduction.importance_source='ssm_out'"):
        _run(state, {"mixer_out": state.hidden}, 0.5)
    assert build_method(UTRCConfig()).needed_features == {"ssm_out", "mixer_out"}
