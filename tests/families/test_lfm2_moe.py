"""LFM2-MoE specifics the shared family tests do not reach: the FLOP shape (dense MLP on the first
``num_dense_layers`` layers, then top-k SwiGLU experts) equals torch's counter on HF's forward, whole model and
module by module; routing with a non-zero expert bias still leaves a batch row equal to the row alone."""
from __future__ import annotations

import pytest
import torch

from family_cases import padded_mask, random_ids
from flop_count import counting_flops
from tor_exp.models import model_shape, patch, reduced_forward, unpatch
from tor_exp.models.flops import layer_flop_terms, model_flops
from tor_exp.models.locations import Schedule
from tor_exp.models.shape import MLP, MoE, ShortConv

import test_families as shared


@pytest.fixture
def moe(family_models):
    model, tok, cfg = family_models["lfm2_moe"]
    unpatch(model)
    yield model, tok, cfg
    unpatch(model)


@pytest.mark.parametrize("length", [16, 37])
@torch.no_grad()
def test_analytic_matmul_flops_equal_the_flop_counter(moe, length):
    """Eager attention and eager experts (the SDPA and grouped-mm kernels are not counted)."""
    model = moe[0]
    shape = model_shape(model)
    assert isinstance(shape.parts(0)[1], MLP) and all(isinstance(shape.parts(l)[1], MoE) for l in range(1, 6))
    saved = model.config._attn_implementation, model.config._experts_implementation
    model.config._attn_implementation, model.config._experts_implementation = "eager", "eager"
    try:
        with counting_flops(model) as counter:
            model(random_ids(1, length), use_cache=False)
    finally:
        model.config._attn_implementation, model.config._experts_implementation = saved
    assert model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True,
                       reference=True) == counter.get_total_flops()
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    prefix = "Lfm2MoeForCausalLM.model.layers.3."
    assert isinstance(shape.parts(3)[0], ShortConv)
    terms = layer_flop_terms(shape, length, reference=True, layer=3)
    moe_part = shape.parts(3)[1]
    assert terms["moe_router"] == counts[prefix + "feed_forward.gate"] == 2.0 * length * 64 * moe_part.experts
    # each token through top_k experts of gate_up (d → 2·size) and down (size → d)
    assert terms["moe_experts"] == counts[prefix + "feed_forward.experts"] == length * moe_part.top_k * (
        2.0 * 64 * 3 * moe_part.size)
    assert terms["conv_in_proj"] + terms["conv_out_proj"] + terms["conv_conv"] == counts[prefix + "conv"]


@torch.no_grad()
def test_a_biased_router_keeps_rows_independent(moe):
    """With a non-zero expert bias (it changes which experts a token picks), a left- and right-padded batch,
    reduced, still equals each row alone."""
    model, _, _ = moe
    blocks = [layer.feed_forward for layer in model.model.layers[1:]]
    saved = [b.expert_bias.clone() for b in blocks]
    g = torch.Generator().manual_seed(11)
    for b in blocks:
        b.expert_bias.copy_(torch.randn(b.expert_bias.shape, generator=g))
    try:
        ids, mask = random_ids(3, 30, seed=9), padded_mask(3, 30)
        patch(model, shared.build_method(shared.build_cfg("utrc", keep_ratio=0.6)), Schedule([2, 4], 0.6))
        batch = reduced_forward(model, ids, mask)
        for r in range(3):
            row = mask[r].bool()
            alone = reduced_forward(model, ids[r:r + 1, row])
            n = int(alone.valid.sum())
            assert n < int(row.sum())
            assert (batch.logits[r][batch.valid[r]] - alone.logits[0, :n]).abs().max() <= shared.TOL, r
    finally:
        for b, bias in zip(blocks, saved):
            b.expert_bias.copy_(bias)
