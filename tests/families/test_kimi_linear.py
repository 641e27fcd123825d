"""Kimi-Linear specifics the shared family tests do not reach: the FLOP shape (KDA's ``DeltaRule(channel_gate)``
terms, the latent attention, experts with a shared expert) equals torch's counter on HF's torch path, whole model
and module by module; the ranking signal is the KDA output before ``o_norm``."""
from __future__ import annotations

import pytest
import torch

from family_cases import random_ids
from flop_count import counting_flops
from tor_exp.models import model_shape, unpatch
from tor_exp.models.families import adapter_of
from tor_exp.models.flops import layer_flop_terms, model_flops
from tor_exp.models.shape import MLP, DeltaRule, LatentAttention, MoE


@pytest.fixture
def kimi(family_models):
    model, tok, cfg = family_models["kimi_linear"]
    unpatch(model)
    yield model, tok, cfg
    unpatch(model)


@pytest.mark.parametrize("length", [37, 100])
@torch.no_grad()
def test_analytic_matmul_flops_equal_the_flop_counter(kimi, length):
    """Eager attention and eager experts (the SDPA and grouped-mm kernels are not counted); one chunk of 64 at 37
    tokens, two at 100."""
    model = kimi[0]
    shape = model_shape(model)
    saved = model.config._attn_implementation, model.config._experts_implementation
    model.config._attn_implementation, model.config._experts_implementation = "eager", "eager"
    try:
        with counting_flops(model) as counter:
            model(random_ids(1, length), use_cache=False)
    finally:
        model.config._attn_implementation, model.config._experts_implementation = saved
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    prefix = "KimiLinearForCausalLM.model.layers."
    kda, moe = shape.parts(1)
    assert isinstance(kda, DeltaRule) and kda.channel_gate and isinstance(moe, MoE)
    terms = layer_flop_terms(shape, length, reference=True, layer=1)
    mixer = prefix + "1.self_attn"
    assert terms["delta_in_proj"] == sum(counts[f"{mixer}.{p}"] for p in (
        "q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj", "g_b_proj", "forget_gate"))
    assert terms["delta_out_proj"] == counts[mixer + ".o_proj"]
    assert sum(terms[t] for t in DeltaRule.matmul_terms) == counts[mixer]
    # whole chunks of 64: 1 at 37 tokens, 2 at 100
    assert terms["delta_intra"] == 2.0 * 64 * (1 if length <= 64 else 2) * 64 * kda.value_heads * (
        kda.key_head_dim + 2 * kda.value_head_dim)
    assert terms["moe_router"] == counts[prefix + "1.mlp.gate"]
    assert terms["moe_shared"] == counts[prefix + "1.mlp.shared_experts"]
    assert terms["moe_experts"] == counts[prefix + "1.mlp.experts"] == length * moe.top_k * (
        2.0 * model.config.hidden_size * 3 * moe.size)
    attention = shape.parts(2)[0]
    assert isinstance(attention, LatentAttention)
    attn_terms = layer_flop_terms(shape, length, reference=True, layer=2)
    assert sum(attn_terms[t] for t in LatentAttention.matmul_terms if t in attn_terms) == counts[
        prefix + "2.self_attn"]
    assert isinstance(shape.parts(0)[1], MLP)
    assert model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True,
                       reference=True) == counter.get_total_flops()


@torch.no_grad()
def test_the_ranking_signal_is_the_kda_output_before_its_gated_norm(kimi):
    model = kimi[0]
    block = model.model.layers[1]
    mixer = block.self_attn
    x = torch.randn(2, 21, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    seen: dict = {}
    handles = [mixer.o_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("normed", args[0])),
               mixer.g_b_proj.register_forward_hook(lambda _m, _a, out: seen.__setitem__("gate", out))]
    store: dict = {}
    try:
        plain = mixer(hidden_states=x)
        with adapter_of(model).capture_ranking(block, store):
            captured_run = mixer(hidden_states=x)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(captured_run, plain)
    heads, dim = mixer.num_heads, mixer.head_dim
    y = store["ssm_out"]
    assert y.shape == (2, 21, heads * dim)
    # independently: per-head RMSNorm of y times o_norm's weight, gated by sigmoid(g), is what o_proj receives
    yh = y.reshape(2, 21, heads, dim)
    normed = yh * torch.rsqrt(yh.pow(2).mean(-1, keepdim=True) + mixer.o_norm.variance_epsilon) * mixer.o_norm.weight
    gated = normed * torch.sigmoid(seen["gate"].reshape(2, 21, heads, dim))
    assert (gated.reshape(2, 21, -1) - seen["normed"]).abs().max() <= 1e-5
    assert adapter_of(model).capture_ranking(model.model.layers[2], store) is None  # attention ranks nothing


@torch.no_grad()
def test_left_padding_never_enters_a_conv_window_or_the_kda_state(kimi):
    """A reduced prefill of a left-padded row (9 padding tokens, more than the conv window) leaves the same conv and
    KDA states (its per-channel decay at padding only multiplies a zero state) and the same logits as the row
    alone; the latent-attention cache holds the row's latents."""
    from tor_exp.models import build_reduction, reducing
    from tor_exp.models.generation import prefill
    from test_families import build_cfg

    model, tok, cfg = kimi
    ids, mask = random_ids(2, 30, seed=21), torch.ones(2, 30, dtype=torch.long)
    mask[1, :9] = 0
    reduction, schedule = build_reduction(build_cfg("utrc", keep_ratio=0.7), cfg, shape=model_shape(model))
    with reducing(model, reduction, schedule, tokenizer=tok):
        batch = prefill(model, ids, mask)
        alone = prefill(model, ids[1:, 9:])
    assert (batch.logits[1] - alone.logits[0]).abs().max() <= 1e-4
    linear = [i for i, t in enumerate(model.config.layer_types) if t == "linear_attention"]
    for i in linear:
        assert (batch.cache.get_conv_state(i)[1] - alone.cache.get_conv_state(i)[0]).abs().max() <= 1e-5, i
        assert (batch.cache.get_recurrent_state(i)[1] - alone.cache.get_recurrent_state(i)[0]).abs().max() <= 1e-5, i
    noisy = ids.clone()
    noisy[1, :9] = 255 - noisy[1, :9]
    a = model(input_ids=ids, attention_mask=mask).logits[1, 9:]
    b = model(input_ids=noisy, attention_mask=mask).logits[1, 9:]
    assert (a - b).abs().max() <= 1e-5
