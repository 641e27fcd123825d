"""Chunk-aware reduction (reduction.chunk_align): aligned lengths meet the FLOPs target, land on chunk multiples,
respect what one location may remove, and the model reproduces them row by row; the padded-work FLOPs figure."""
from __future__ import annotations

import math

import pytest
import torch

from tor_exp.errors import ConfigError
from tor_exp.models.flops import kept_lengths_reduction, padded_flops_reduction, realised_flops_reduction
from tor_exp.models.shape import Mamba1, Mamba2, ModelShape
from tor_exp.models.schedule import (
    ALIGN_TOLERANCE,
    Schedule,
    align_schedule,
    build_schedule,
    solve_keep_ratio,
)

from conftest import random_ids, tiny_cfg

SHAPE = ModelShape.repeated(768, 24, 50280, Mamba2(d_inner=1536, heads=24, head_dim=64, state_size=128, chunk_size=256))


def _kept(schedule: Schedule, n: int) -> list[float]:
    kept, previous = [], float(n)
    for r in schedule.keep_ratios:
        previous = previous * r
        kept.append(previous)
    return kept


@pytest.mark.parametrize("chunk", [64, 128, 256])
@pytest.mark.parametrize("n", [1024, 1536, 2048, 3000])
@pytest.mark.parametrize("locations", [[5, 8, 11, 14, 17], [3, 9, 15], [11]])
@pytest.mark.parametrize("target", [0.1, 0.2, 0.3])
def test_aligned_schedule_meets_its_target_on_chunk_multiples(chunk, n, locations, target):
    rho = solve_keep_ratio(24, locations, target)
    aligned = align_schedule(Schedule(locations, rho, target), 24, chunk, n, shape=SHAPE, max_fraction=0.5)
    if rho < 0.5:  # one location after 11 of 24 layers must keep 40 % for 30 %: a bipartite method keeps ≥ half
        assert not aligned.keep_ratios  # no aligned lengths can meet it: the plain schedule stays
        return
    kept = _kept(aligned, n)
    assert abs(kept_lengths_reduction(SHAPE, 24, locations, kept, n, "backbone", "all") - target) <= ALIGN_TOLERANCE
    assert aligned.aligned == [math.isclose(k % chunk, 0, abs_tol=1e-6) or math.isclose(k % chunk, chunk, abs_tol=1e-6)
                               for k in kept]
    assert sum(aligned.aligned) >= len(locations) - 1  # at most the last location is off a chunk multiple
    previous = n
    for k in kept:  # bipartite methods remove at most half of a location's tokens
        assert previous / 2 - 1e-6 <= k <= previous + 1e-6
        previous = k


def test_chunk_align_is_off_by_default_and_refused_for_threshold_methods(compose):
    assert compose("model=tiny_mamba2").reduction.chunk_align is False
    with pytest.raises(ConfigError, match=r"^reduction.chunk_align=true: reduction=ltmp"):
        compose("model=tiny_mamba2", "reduction=ltmp", "reduction.chunk_align=true")


@torch.no_grad()
def test_the_model_keeps_the_aligned_lengths_row_by_row():
    """Tiny Mamba-2 with 16-token chunks: a 128-token row keeps exactly the schedule's lengths; shorter rows in the
    same batch are aligned on their own lengths, as they would be alone."""
    from tor_exp.models import build_reduction, load_model, model_shape, reduced_forward, reducing
    from tor_exp.reduction.utrc import UTRCConfig

    cfg = tiny_cfg("mamba2", chunk_size=16)
    model, tok = load_model(cfg)
    method, schedule = build_reduction(UTRCConfig(target_flops=0.3, chunk_align=True), cfg, shape=model_shape(model),
                                       seq_len=128)
    assert schedule.chunk == 16 and schedule.keep_ratios
    expected = [128] + [round(k) for k in _kept(schedule, 128)]
    ids = random_ids(3, 128, seed=2)
    mask = torch.ones(3, 128, dtype=torch.long)
    mask[1, :40] = 0
    mask[2, 100:] = 0
    with reducing(model, method, schedule, tokenizer=tok):
        out = reduced_forward(model, ids, mask)
        counts = out.tokens_per_layer[0].tolist()
        for b in (1, 2):
            alone = reduced_forward(model, ids[b:b + 1, mask[b].bool()])
            assert out.tokens_per_layer[b].tolist() == alone.tokens_per_layer[0].tolist()
    per_layer = [expected[sum(1 for l in schedule.locations if l < layer)] for layer in range(8)]
    assert counts == per_layer
    assert out.flops["backbone"] > 0.2  # the shorter rows reduce less than 30 % (fewer whole chunks)
    single = realised_flops_reduction(torch.tensor([counts]), [128], model_shape(model))
    assert abs(single["backbone"] - 0.3) <= ALIGN_TOLERANCE
    assert single["backbone_padded"] == pytest.approx(single["backbone"], abs=1e-12)  # nothing padded


def test_padded_figure_counts_whole_chunks_and_the_batch_width():
    # one token past a 256 boundary costs a whole chunk in the scan: less realised than the token figure
    plain = torch.tensor([[1024] * 6 + [769] * 18])
    aligned = torch.tensor([[1024] * 6 + [768] * 18])
    assert padded_flops_reduction(plain, [1024], SHAPE) < realised_flops_reduction(plain, [1024], SHAPE)["backbone"]
    assert padded_flops_reduction(aligned, [1024], SHAPE) == pytest.approx(
        realised_flops_reduction(aligned, [1024], SHAPE)["backbone"], abs=1e-12)
    # a batch computes every row at its width: a short row gains nothing while a long one pads the batch
    mixed = torch.tensor([[1024] * 6 + [768] * 18, [1024] * 6 + [512] * 18])
    assert padded_flops_reduction(mixed, [1024, 1024], SHAPE) == pytest.approx(
        padded_flops_reduction(aligned, [1024], SHAPE), abs=1e-12)
    # Mamba-1 does not scan in chunks: no padded figure
    mamba1 = ModelShape.repeated(64, 2, 258, Mamba1(d_inner=128, state_size=16))
    assert "backbone_padded" not in realised_flops_reduction(torch.tensor([[10, 5]]), [10], mamba1)


def test_build_schedule_aligns_for_the_given_length():
    from tor_exp.reduction.utrc import UTRCConfig

    cfg = tiny_cfg("mamba2", chunk_size=16)
    plain = build_schedule(UTRCConfig(target_flops=0.2), cfg)
    aligned = build_schedule(UTRCConfig(target_flops=0.2, chunk_align=True), cfg, seq_len=256)
    assert not plain.keep_ratios and plain.chunk == 0
    assert aligned.chunk == 16 and len(aligned.keep_ratios) == len(cfg.locations)
    assert aligned.keep_ratio == pytest.approx(plain.keep_ratio)
