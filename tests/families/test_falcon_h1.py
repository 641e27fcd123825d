"""Falcon-H1 specifics the shared family tests do not reach: the importance source is the Mamba mixer's y before
its gate, whether the mixer ends with a gated RMSNorm ``norm(y, gate)`` (``mamba_rms_norm: true``) or with
``y·silu(gate)`` right after the scan (false, the tiny config's); and the gated-norm variant (as in Falcon-H1-7B:
``mamba_rms_norm: true``, ``mamba_norm_before_gate: false``) passes the shared checks against HF too; the FLOP shape reads Falcon-H1's own
sizes (SSM width ``mamba_d_ssm``, attention ``head_dim`` ≠ hidden_size / heads, gated MLP)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers.cache_utils import DynamicCache

import test_families as shared
from family_cases import padded_mask, random_ids
from tor_exp.models import model_shape, unpatch
from tor_exp.models.families.capture import capture_mamba2 as capture_ssm_out
from tor_exp.models.flops import layer_flop_terms

GATED_NORM = ("model.tiny.config.mamba_rms_norm=true", "+model.tiny.config.mamba_norm_before_gate=false")


@pytest.fixture(scope="module")
def gated_norm_model(compose):
    from tor_exp.models import load_model

    cfg = compose("model=tiny_falcon_h1", *GATED_NORM).model
    model, tok = load_model(cfg)
    assert model.config.mamba_rms_norm and not model.config.mamba_norm_before_gate
    return model, tok, cfg


@pytest.fixture(params=["scan_then_gate", "gated_norm"])
def falcon(request, family_models, gated_norm_model):
    model, tok, cfg = family_models["falcon_h1"] if request.param == "scan_then_gate" else gated_norm_model
    assert bool(model.config.mamba_rms_norm) == (request.param == "gated_norm")
    unpatch(model)
    yield model, tok, cfg
    unpatch(model)


def _gated(mixer, y, gate):
    """What HF's mixer hands its out_proj for a scan output y (the two endings of FalconH1Mixer.forward)."""
    return mixer.norm(y, gate) if mixer.mamba_rms_norm else y * F.silu(gate)


@torch.no_grad()
def test_captured_ssm_out_is_y_before_the_gate(falcon):
    """Gating the captured y with HF's own gate (the in_proj's first block, µP vector applied) and HF's own ending
    gives exactly what the mixer feeds its out_proj, and capturing does not change the mixer's output."""
    model, _, _ = falcon
    mixer = model.model.layers[3].mamba
    x = torch.randn(3, 37, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    mask = padded_mask(3, 37).float()
    seen = {}
    hooks = [mixer.in_proj.register_forward_hook(lambda _m, _a, out: seen.__setitem__("projected", out)),
             mixer.out_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("gated", args[0]))]
    try:
        plain = mixer(x, attention_mask=mask)
        store = {}
        with capture_ssm_out(mixer, store):
            captured_run = mixer(x, attention_mask=mask)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(captured_run, plain)
    y = store["ssm_out"]
    assert y.shape == (3, 37, mixer.intermediate_size)
    gate = (seen["projected"] * mixer.mup_vector)[..., : mixer.intermediate_size]
    assert (_gated(mixer, y, gate) - seen["gated"]).abs().max() <= 1e-6
    assert (y - seen["gated"]).abs().max() > 1e-2  # the gate really acts: y is taken before it


@torch.no_grad()
def test_captured_ssm_out_in_a_decode_step_is_y_before_the_gate(falcon):
    """The one-token recurrent step (a different HF scan function; the ungated ending passes the gate into it)."""
    model, _, _ = falcon
    mixer = model.model.layers[2].mamba
    g = torch.Generator().manual_seed(2)
    prompt, nxt = (torch.randn(2, n, model.config.hidden_size, generator=g) for n in (20, 1))
    seen = {}
    hooks = [mixer.in_proj.register_forward_hook(lambda _m, _a, out: seen.__setitem__("projected", out)),
             mixer.out_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("gated", args[0]))]
    try:
        outs, stores = [], []
        for capture in (False, True):
            cache = DynamicCache(config=model.config)
            mixer(prompt, cache=cache)
            store = {}
            with capture_ssm_out(mixer, store, enabled=capture):
                outs.append(mixer(nxt, cache=cache))
            stores.append(store)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(outs[0], outs[1]) and not stores[0]
    y = stores[1]["ssm_out"]
    assert y.shape == (2, 1, mixer.intermediate_size)
    gate = (seen["projected"] * mixer.mup_vector)[..., : mixer.intermediate_size]
    assert (_gated(mixer, y, gate) - seen["gated"]).abs().max() <= 1e-6
    assert (y - seen["gated"]).abs().max() > 1e-2


@pytest.mark.parametrize("check", [
    "test_unreduced_equals_hf_forward_with_padding",
    "test_prune_only_equals_hf_layers_on_the_kept_tokens",
    "test_greedy_generation_after_an_unreduced_prefill_equals_hf_generate",
    "test_reduced_prefill_decodes_like_a_prefill_of_the_longer_prompt",
])
def test_the_gated_norm_variant_passes_the_shared_checks(gated_norm_model, check):
    model = gated_norm_model[0]
    unpatch(model)
    try:
        test = getattr(shared, check)
        if check == "test_prune_only_equals_hf_layers_on_the_kept_tokens":
            test(gated_norm_model, "falcon_h1")
        else:
            test(gated_norm_model)
    finally:
        unpatch(model)


def test_the_gated_norm_variant_ranks_a_batch_like_each_row_alone(gated_norm_model):
    model = gated_norm_model[0]
    unpatch(model)
    try:
        shared.test_batch_of_eight_equals_each_row_alone(gated_norm_model, "utrc")
    finally:
        unpatch(model)


@torch.no_grad()
def test_flop_shape_counts_what_hf_projects(falcon):
    """Each projection term of the analytic layer FLOPs equals FlopCounterMode's count of HF's own modules."""
    model, _, _ = falcon
    length = 37
    with FlopCounterMode(display=False) as counter:
        model(random_ids(1, length), use_cache=False)
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    layer = f"{type(model).__name__}.model.layers.0."
    terms = layer_flop_terms(model_shape(model), length, reference=True, layer=0)
    assert model.config.head_dim != model.config.hidden_size // model.config.num_attention_heads
    assert terms["in_proj"] == counts[layer + "mamba.in_proj"]
    assert terms["out_proj"] == counts[layer + "mamba.out_proj"]
    assert terms["attn_qkv"] == sum(counts[layer + f"self_attn.{p}_proj"] for p in "qkv")
    assert terms["attn_out"] == counts[layer + "self_attn.o_proj"]
    assert terms["mlp_in"] == counts[layer + "feed_forward.gate_proj"] + counts[layer + "feed_forward.up_proj"]
    assert terms["mlp_out"] == counts[layer + "feed_forward.down_proj"]
