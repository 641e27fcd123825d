"""Parity mode (METHOD.md §6): official_* functions against loop references, hand cases, registered wrappers."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from naive_reference import ref_official_evit, ref_official_utrc
from tor_exp.reduction import TokenState, build_method
from tor_exp.reduction.official import (
    EViTOfficialConfig,
    PuMerOfficialConfig,
    UTRCOfficialConfig,
    official_evit,
    official_pumer,
    official_removal,
    official_utrc,
)

SETTINGS = settings(max_examples=30, deadline=None, database=None)
MODES = ["prune", "merge", "hybrid"]


def _inputs(seed, batch, length, dim, positive):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, dim, generator=g)
    residual = torch.randn(batch, length, dim, generator=g)
    metric = torch.randn(batch, length, dim, generator=g)
    if positive:  # clip is then a no-op that cannot create all-zero (NaN) tokens or ties
        metric = metric.abs() + 0.05
    return hidden, residual, metric


def _check(out, ref_rows):
    hidden, residual, kept = out
    for b, (rh, rr, rk) in enumerate(ref_rows):
        assert kept[b].tolist() == rk
        torch.testing.assert_close(hidden[b].double(), torch.tensor(rh, dtype=torch.float64), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(residual[b].double(), torch.tensor(rr, dtype=torch.float64), atol=1e-5, rtol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), length=st.integers(2, 17), dim=st.integers(2, 6),
       keep_ratio=st.floats(0.3, 1.0), modes=st.sampled_from(list(itertools.product(MODES, MODES))),
       clip=st.booleans())
def test_official_utrc_matches_loop_reference(seed, batch, length, dim, keep_ratio, modes, clip) -> None:
    hidden, residual, metric = _inputs(seed, batch, length, dim, positive=clip)
    out = official_utrc(hidden, residual, metric, keep_ratio, modes[0], modes[1], clip)
    refs = [ref_official_utrc(hidden[b], residual[b], metric[b], keep_ratio, modes[0], modes[1], clip)
            for b in range(batch)]
    _check(out, refs)
    assert out[2].shape[1] == length - max(official_removal(length, keep_ratio), 0)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), length=st.integers(2, 17), dim=st.integers(2, 6),
       keep_ratio=st.floats(0.3, 1.0), clip=st.booleans())
def test_official_pumer_matches_loop_reference(seed, batch, length, dim, keep_ratio, clip) -> None:
    hidden, residual, metric = _inputs(seed, batch, length, dim, positive=clip)
    out = official_pumer(hidden, residual, metric, keep_ratio, clip)
    refs = [ref_official_utrc(hidden[b], residual[b], metric[b], keep_ratio, "merge", "merge", clip, tome=True)
            for b in range(batch)]
    _check(out, refs)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(2, 17), dim=st.integers(2, 6),
       keep_ratio=st.floats(0.2, 1.0), clip=st.booleans())
def test_official_evit_matches_loop_reference(seed, length, dim, keep_ratio, clip) -> None:
    hidden, residual, metric = _inputs(seed, 1, length, dim, positive=False)
    out = official_evit(hidden, residual, metric, keep_ratio, clip)
    _check(out, [ref_official_evit(hidden[0], residual[0], metric[0], keep_ratio, clip)])


def test_official_utrc_hand_worked_even_odd_application() -> None:
    # N = 4, ρ = 0.5 ⇒ r = 2. Normalised metric rows t0..t3 ≈ [.981,.196] [.707,.707] [.196,.981] [.8,.6];
    # per-channel descending sort: Xs ≈ [[.981,.981], [.8,.707], [.707,.6], [.196,.196]]; b = Xs[:2],
    # a = Xs[2:]. a0·b = [1.282, .990], a1·b = [.385, .295] ⇒ both nodes pick b-row 0; edge = [0, 1] ⇒
    # src = [0, 1], dst = [0, 0]: even positions 0 and 2 both merge into odd position 1.
    metric = torch.tensor([[[1.0, 0.2], [0.5, 0.5], [0.2, 1.0], [0.4, 0.3]]])
    hidden = torch.tensor([[[1.0], [2.0], [4.0], [8.0]]])
    residual = hidden * 10
    h, r, kept = official_utrc(hidden, residual, metric, 0.5, "merge", "prune", clip=True)
    assert kept.tolist() == [[1, 3]]
    torch.testing.assert_close(h[0, :, 0], torch.tensor([(2.0 + 1.0 + 4.0) / 3, 8.0]))
    torch.testing.assert_close(r[0, :, 0], torch.tensor([20.0, 80.0]))  # prune: contributions 0, size 0


def test_official_hybrid_counts_r_over_2_sources_and_keeps_per_channel_topk() -> None:
    # Make every even token merge into position 1: N = 4, r = 2, k = 1. Per channel the larger of the two
    # source values is kept; exactly one source counts in the size.
    metric = torch.tensor([[[1.0, 0.2], [0.5, 0.5], [0.2, 1.0], [0.4, 0.3]]])  # as above: 0, 2 → 1
    hidden = torch.tensor([[[1.0, 5.0], [2.0, 2.0], [4.0, -1.0], [8.0, 8.0]]])
    h, _, kept = official_utrc(hidden, hidden.clone(), metric, 0.5, "hybrid", "merge", clip=True)
    assert kept.tolist() == [[1, 3]]
    # channel 0: max(1, 4) = 4; channel 1: max(5, -1) = 5; size 1 + 1 = 2
    torch.testing.assert_close(h[0, 0], torch.tensor([(2.0 + 4.0) / 2, (2.0 + 5.0) / 2]))


def test_official_evit_keeps_the_lowest_scores_and_retries_on_ties() -> None:
    hidden = torch.arange(8, dtype=torch.float32).view(2, 4, 1)
    # row 0: s = [4, 3, 2, 1] ⇒ keep ceil(4·.5)+1 = 3 lowest: positions 1, 2, 3
    # row 1: all-zero scores ⇒ −inf ties ⇒ 4 kept; total 7 is not divisible by 2 ⇒ retry with num_keep = 3
    metric = torch.tensor([[[4.0], [3.0], [2.0], [1.0]], [[0.0], [0.0], [0.0], [0.0]]])
    _, _, kept = official_evit(hidden, hidden, metric, 0.5, clip=True)
    assert kept.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    _, _, kept = official_evit(hidden[:1], hidden[:1], metric[:1], 0.5, clip=True)
    assert kept.tolist() == [[1, 2, 3]]


def test_official_removal_uses_python_ceil_and_the_half_cap() -> None:
    assert official_removal(100, 0.905) == 9
    assert official_removal(10, 0.2) == 5  # capped at N // 2
    assert official_removal(3, 0.905) == 0


@pytest.mark.parametrize("cfg", [UTRCOfficialConfig(), UTRCOfficialConfig(hidden="prune", residual="hybrid"),
                                 PuMerOfficialConfig(), EViTOfficialConfig()])
def test_registered_wrappers_equal_the_pure_functions(cfg) -> None:
    hidden, residual, metric = _inputs(3, 2, 23, 5, positive=False)
    hidden = hidden.abs() + 0.01  # the wrapper's metric is the hidden stream
    state = TokenState.initial(hidden, residual)
    out = build_method(cfg).reduce(state, {"mixer_out": hidden}, 0.7, 12)
    if isinstance(cfg, EViTOfficialConfig):
        exp = official_evit(hidden, residual, hidden, 0.7)
    elif isinstance(cfg, PuMerOfficialConfig):
        exp = official_pumer(hidden, residual, hidden, 0.7)
    else:
        exp = official_utrc(hidden, residual, hidden, 0.7, cfg.hidden, cfg.residual)
    assert torch.equal(out.hidden, exp[0]) and torch.equal(out.residual, exp[1])
    assert torch.equal(out.positions, exp[2])
    if isinstance(cfg, EViTOfficialConfig):
        assert out.sizes.sum().item() == out.valid.sum().item()  # pure removal
    elif getattr(cfg, "residual", "merge") == "merge":
        assert out.sizes.sum().item() == 46.0  # residual merge conserves the bookkeeping counts
    else:  # residual hybrid: r = 23 - ceil(16.1) = 6 per row, k = r // 2 = 3 of them count
        assert out.sizes.sum().item() == 2 * (23 - 6 + 3)


def test_official_ignores_protection_like_the_released_code() -> None:
    hidden, residual, _ = _inputs(4, 1, 10, 4, positive=True)
    protected = torch.ones(1, 10, dtype=torch.bool)
    state = TokenState.initial(hidden, residual, protected=protected)
    out = build_method(UTRCOfficialConfig()).reduce(state, {}, 0.7, 12)
    assert int(out.valid.sum()) == 7
