"""LFM3 specifics the shared family tests do not reach: the sliding window after a reduction covers the survivors
within the query's original window of POSITIONS (prefill and many decode steps past the window), the reference's
position-window mask is HF's own on an unreduced sequence, and the FLOP shape's matmul terms equal torch's counter."""
from __future__ import annotations

import pytest
import torch

from family_cases import random_ids
from flop_count import counting_flops
from ref_lfm3 import prune_reference
from tor_exp.models import model_shape, patch, reduced_forward, unpatch
from tor_exp.models.flops import model_flops
from tor_exp.models.generation import decode_step, prefill
from tor_exp.models.locations import Schedule

import test_families as shared


@pytest.fixture
def lfm3(family_models):
    model = family_models["lfm3"][0]
    unpatch(model)
    yield model
    unpatch(model)


@torch.no_grad()
def test_the_reference_mask_is_hfs_sliding_mask_on_an_unreduced_sequence(lfm3):
    """All tokens kept: the position-window reference equals HF's own forward (its sliding mask) at 40 tokens, five
    windows long — so the reference's window bound (p − window < q ≤ p) is HF's, not off by one."""
    assert lfm3.config.sliding_window == 8 and "sliding_attention" in lfm3.config.layer_types
    ids = random_ids(1, 40, seed=3)
    ref = prune_reference(lfm3, ids, 0, torch.arange(40))
    assert (lfm3(ids).logits.float() - ref).abs().max() <= shared.TOL


@torch.no_grad()
def test_a_reduced_prefill_windows_by_original_positions(lfm3):
    """Pruning before the sliding layer (location 1, layer 4 slides): tor_exp equals the HF-layer reference with the
    original-position window, and differs from the same reference windowed by the reduced index (the rule matters
    at this length)."""
    n = 48
    ids = random_ids(1, n, seed=5)
    keep = torch.tensor([p for p in range(n) if p % 3 != 1])
    patch(lfm3, shared.DropPositions(), Schedule([1], 0.5))
    out = reduced_forward(lfm3, ids)
    assert int(out.valid.sum()) == len(keep)
    got = out.logits[0, : len(keep)].float()
    by_position = prune_reference(lfm3, ids, 1, keep)[0]
    assert (got - by_position).abs().max() <= shared.TOL
    by_index = prune_reference(lfm3, ids, 1, keep, window_by_index=True)[0]
    assert (got - by_index).abs().max() > 1e-2


@torch.no_grad()
def test_decoding_past_the_window_after_a_reduced_prefill(lfm3):
    """12 decode steps (more than the window of 8) after a reduced, left-padded prefill: every step's logits equal a
    reduced prefill of the longer prompt (HF's sliding cache holds the last window − 1 slots; the mask bookkeeping
    follows them)."""
    ids, mask = random_ids(2, 30, seed=21), torch.ones(2, 30, dtype=torch.long)
    mask[1, :6] = 0
    steps = random_ids(2, 12, seed=22)
    patch(lfm3, shared.DropPositions(), Schedule([1, 4], 0.5))
    cache = prefill(lfm3, ids, mask).cache
    for t in range(steps.shape[1]):
        decoded = decode_step(lfm3, steps[:, t], cache)
        longer = torch.cat([ids, steps[:, : t + 1]], dim=1)
        full = torch.cat([mask, torch.ones(2, t + 1, dtype=torch.long)], dim=1)
        protected = torch.zeros_like(full, dtype=torch.bool)
        protected[:, 30 - 1:] = True  # the prompt's last token and every decoded token are never reduced
        ref = reduced_forward(lfm3, longer, full, protected=protected, logits="last")
        assert (decoded - ref.logits[:, 0]).abs().max() <= shared.TOL, t


@pytest.mark.parametrize("length", [16, 37])
@torch.no_grad()
def test_analytic_flops_match_the_flop_counter(lfm3, length):
    """Under eager attention FlopCounterMode sees every matmul-like op of HF's forward (tests/flop_count.py): the
    per-head gate projection included, sliding scores counted dense (what the masked eager kernel computes)."""
    shape = model_shape(lfm3)
    implementation = lfm3.config._attn_implementation
    lfm3.config._attn_implementation = "eager"
    try:
        with counting_flops(lfm3) as counter:
            lfm3(random_ids(1, length), use_cache=False)
    finally:
        lfm3.config._attn_implementation = implementation
    analytic = model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True, reference=True)
    assert analytic == counter.get_total_flops()
