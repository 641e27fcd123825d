"""Zamba2's FLOP shape against what HF's modules compute: the shared block's attention reads 2·d_model features, its
gated MLP d_model, each use adds its LoRA adapters and the ``linear`` projection, then the layer's Mamba-2 mixer."""
from __future__ import annotations

import pytest
import torch
from flop_count import counting_flops


@pytest.mark.parametrize("length", [16, 37])
@torch.no_grad()
def test_analytic_flops_match_the_flop_counter(family_models, length):
    """FlopCounterMode counts matmul-like ops; under eager attention it sees the score and value products too (SDPA
    on CPU it does not), so the analytic matmul terms (HF's reference SSD form) must match its total."""
    from tor_exp.models import model_shape, unpatch
    from tor_exp.models.flops import layer_flop_terms, model_flops

    model = family_models["zamba2"][0]
    unpatch(model)
    shape = model_shape(model)
    hybrid = [l for l in range(shape.n_layer) if "attention" in shape.kinds(l)]
    assert len(hybrid) >= 2 and model.config.use_mem_rope
    implementation = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with counting_flops(model) as counter:
            model(torch.randint(0, 256, (1, length)), use_cache=False)
    finally:
        model.config._attn_implementation = implementation
    analytic = model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True, reference=True)
    assert analytic == pytest.approx(counter.get_total_flops(), rel=0.005)
    # the shared block's pieces at a hybrid layer, module by module (exact: linear layers)
    counts = {name: sum(by_op.values()) for name, by_op in counter.get_flop_counts().items()}
    terms = layer_flop_terms(shape, length, reference=True, layer=hybrid[0])
    block = f"Zamba2ForCausalLM.model.layers.{hybrid[0]}.shared_transformer"
    qkv = sum(counts[f"{block}.self_attn.{p}_proj"] for p in "qkv")
    adapters = sum(counts[f"{block}.self_attn.linear_{p}_adapter_list.0"] for p in "qkv")
    assert terms["attn_qkv"] == qkv and terms["attn_adapters"] == adapters
    assert terms["attn_out"] == counts[f"{block}.self_attn.o_proj"]
    assert terms["mlp_in"] == counts[f"{block}.feed_forward.gate_up_proj"]
    assert terms["mlp_adapters"] == counts[f"{block}.feed_forward.gate_up_proj_adapter_list.0"]
    assert terms["mlp_out"] == counts[f"{block}.feed_forward.down_proj"]
    assert terms["linear"] == counts[f"Zamba2ForCausalLM.model.layers.{hybrid[0]}.linear"]
