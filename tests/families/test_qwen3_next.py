"""Gated DeltaNet families (Qwen3-Next, Qwen3.5, OLMo-Hybrid): what the shared family tests do not reach.

Qwen3-Next: the FLOP shape (Gated DeltaNet, gated attention, MoE
with a gated shared expert) equals torch's FLOP counter on HF's torch path, the ranking signal is the delta-rule
output before the gated norm and ``out_proj``, and padding never enters a conv window or a delta-rule state (left
padding leaking through the short conv into the state is the bug class to catch)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from family_cases import random_ids
from tor_exp.models import model_shape, patch, unpatch
from tor_exp.models.families.qwen3_next import capture_delta_rule
from tor_exp.models.flops import layer_flop_terms, model_flops
from tor_exp.models.shape import DeltaRule, MoE


@pytest.fixture
def qwen(family_models):
    model, tok, cfg = family_models["qwen3_next"]
    unpatch(model)
    yield model, tok, cfg
    unpatch(model)


@contextmanager
def counting(model: nn.Module) -> Iterator[FlopCounterMode]:
    """FlopCounterMode over HF's torch path: parameters frozen (transformers 5.25's kernel wrappers otherwise break
    the counter's module tracker), eager attention and eager experts (the SDPA and grouped-mm kernels are not
    counted), all restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    saved = model.config._attn_implementation, model.config._experts_implementation
    for p, _ in flags:
        p.requires_grad_(False)
    model.config._attn_implementation, model.config._experts_implementation = "eager", "eager"
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            yield counter
    finally:
        model.config._attn_implementation, model.config._experts_implementation = saved
        for p, flag in flags:
            p.requires_grad_(flag)


@pytest.mark.parametrize("length", [37, 100])
def test_analytic_matmul_flops_equal_the_flop_counter(qwen, length):
    """Whole model (one chunk at 37 tokens, two at 100) and the Gated DeltaNet module by module, exactly."""
    model = qwen[0]
    shape = model_shape(model)
    with counting(model) as counter:
        model(random_ids(1, length), use_cache=False)
    assert model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True,
                       reference=True) == counter.get_total_flops()
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    layer, prefix = 0, "Qwen3NextForCausalLM.model.layers.0."
    part = shape.parts(layer)[0]
    assert isinstance(part, DeltaRule) and isinstance(shape.parts(layer)[1], MoE)
    terms = layer_flop_terms(shape, length, reference=True, layer=layer)
    mixer = prefix + "linear_attn"
    assert terms["delta_in_proj"] == counts[mixer + ".in_proj_qkvz"] + counts[mixer + ".in_proj_ba"]
    assert terms["delta_out_proj"] == counts[mixer + ".out_proj"]
    assert sum(terms[t] for t in part.matmul_terms) == counts[mixer]
    # the chunked scan computes whole chunks of 64: 1 chunk at 37 tokens, 2 at 100
    assert terms["delta_intra"] == 2.0 * 64 * (1 if length <= 64 else 2) * 64 * part.value_heads * (
        2 * part.key_head_dim + part.value_head_dim)
    assert terms["moe_shared_gate"] == counts[prefix + "mlp.shared_expert_gate"]
    assert terms["moe_router"] == counts[prefix + "mlp.gate"]
    moe = shape.parts(layer)[1]
    expert = 2.0 * model.config.hidden_size * 3 * moe.size  # gate_up and down projections of one expert
    assert counts[prefix + "mlp.experts"] == length * moe.top_k * expert
    attention = "Qwen3NextForCausalLM.model.layers.2.self_attn"
    attn_terms = layer_flop_terms(shape, length, reference=True, layer=2)
    assert attn_terms["attn_qkv"] + attn_terms["attn_gate_proj"] == sum(
        counts[f"{attention}.{p}_proj"] for p in "qkv")


def test_the_ideal_delta_rule_is_linear_and_the_reference_pads_chunks():
    part = DeltaRule(key_heads=2, value_heads=4, key_head_dim=16, value_head_dim=16)
    one, two = part.terms(32, 50), part.terms(32, 100)
    assert all(two[k] == pytest.approx(2 * one[k]) for k in one)
    padded = part.terms(32, 65, reference=True)
    assert padded["delta_intra"] == part.terms(32, 128)["delta_intra"]
    assert set(part.padded_terms) <= set(padded) and part.chunk == 64


@torch.no_grad()
def test_the_ranking_signal_is_the_delta_rule_output_before_its_gated_norm(qwen):
    """out_proj(norm(captured, z)) with z from HF's own projection reproduces the mixer's output: the captured
    tensor is exactly what enters the gated norm, laid out [B, N, value heads · value head dim]."""
    model = qwen[0]
    mixer = model.model.layers[0].linear_attn
    x = torch.randn(2, 21, model.config.hidden_size)
    store: dict = {}
    with capture_delta_rule(mixer, store):
        out = mixer(x)
    y = store["ssm_out"]
    assert y.shape == (2, 21, mixer.num_v_heads * mixer.head_v_dim)
    *_, z, _, _ = mixer.fix_query_key_value_ordering(mixer.in_proj_qkvz(x), mixer.in_proj_ba(x))
    rebuilt = mixer.out_proj(mixer.norm(y.reshape(-1, mixer.head_v_dim), z.reshape(-1, mixer.head_v_dim))
                             .reshape(2, 21, -1))
    assert (rebuilt - out).abs().max() <= 1e-6
    # the per-token signal of an earlier token does not depend on later tokens (causal)
    with capture_delta_rule(mixer, store):
        mixer(x[:, :10])
    assert (store["ssm_out"] - y[:, :10]).abs().max() <= 1e-5


@torch.no_grad()
def test_left_padding_never_enters_a_conv_window_or_the_delta_rule_state(qwen):
    """A reduced prefill of a left-padded row (padding 9 tokens, longer than the conv window) leaves the same conv
    and delta-rule states, and the same next-token logits, as the row alone; HF's own forward of the padded batch
    agrees on the logits too (its padding mask zeroes the inputs before in_proj)."""
    from tor_exp.models import build_reduction, reducing
    from tor_exp.models.generation import prefill
    from test_families import build_cfg

    model, tok, cfg = qwen
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
    # a left-padded row fed to HF's own layers with its 2-D padding mask: padding states are zeroed, so even a
    # garbage padding token changes nothing
    noisy = ids.clone()
    noisy[1, :9] = 255 - noisy[1, :9]
    a = model(input_ids=ids, attention_mask=mask).logits[1, 9:]
    b = model(input_ids=noisy, attention_mask=mask).logits[1, 9:]
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_moe", "olmo_hybrid"])
def test_other_gated_deltanet_families_matmul_flops_equal_the_flop_counter(family_models, name):
    """Qwen3.5's Gated DeltaNet projects q·k·v, z, b and a apart, OLMo-Hybrid's q, k, v, a, b and g (same totals
    as Qwen3-Next's fused projections); OLMo-Hybrid's attention has no output gate."""
    model = family_models[name][0]
    unpatch(model)
    shape = model_shape(model)
    mixer = model.model.layers[0].linear_attn
    assert hasattr(mixer, "in_proj_z") or hasattr(mixer, "g_proj")
    for length in (37, 100):
        with counting(model) as counter:
            model(random_ids(1, length), use_cache=False)
        assert model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True,
                           reference=True) == counter.get_total_flops(), length


@torch.no_grad()
def test_qwen3_5_text_stack_of_a_multimodal_checkpoint(family_models, tmp_path):
    """`model=local` on a saved Qwen3_5ForConditionalGeneration (a tiny vision tower included): the family comes
    from config.json (model_type qwen3_5), HF's text-only class loads the language model, and its logits (through
    tor_exp's loop, unreduced) equal the multimodal model's on text; the FLOP shape reads the nested text_config."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from tor_exp.config import compose
    from tor_exp.models import load_model, reduced_forward
    from tor_exp.models.loading import shape_from_model_config

    text_model, tok, _ = family_models["qwen3_5"]
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=4,
                  spatial_merge_size=1, temporal_patch_size=1)
    torch.manual_seed(0)
    multimodal = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text_model.config.to_dict(),
                                                               vision_config=vision)).eval()
    multimodal.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = compose(["model=local", f"model.path={tmp_path}", "reduction=none"]).model
    model, _ = load_model(cfg)
    assert type(model).__name__ == "Qwen3_5ForCausalLM"
    ids = random_ids(2, 20, seed=23)
    assert (reduced_forward(model, ids).logits - multimodal(input_ids=ids).logits).abs().max() <= 1e-5
    assert shape_from_model_config(cfg) == model_shape(model)


@torch.no_grad()
def test_olmo_hybrid_ranks_by_the_delta_rule_output_before_o_norm(family_models):
    """OLMo-Hybrid's gated norm is ``o_norm(output, g_proj(x))``: the captured signal rebuilds the mixer output."""
    model = family_models["olmo_hybrid"][0]
    mixer = model.model.layers[0].linear_attn
    x = torch.randn(2, 17, model.config.hidden_size)
    store: dict = {}
    with capture_delta_rule(mixer, store, norm=mixer.o_norm):
        out = mixer(x)
    y, dv = store["ssm_out"], mixer.head_v_dim
    rebuilt = mixer.o_proj(mixer.o_norm(y.reshape(-1, dv), mixer.g_proj(x).reshape(-1, dv)).reshape(2, 17, -1))
    assert (rebuilt - out).abs().max() <= 1e-6
