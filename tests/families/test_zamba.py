"""Zamba v1 specifics the shared family tests do not reach: the ranking signal is the heads' y before the gate in
channel order (y·silu(z) is exactly what ``out_proj`` receives); with ``mamba_proj_bias`` padding still never
enters a conv window; the FLOP shape equals torch's counter on HF's forward, module by module."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from family_cases import padded_mask, random_ids
from flop_count import counting_flops
from tor_exp.models import model_shape, patch, reduced_forward, unpatch
from tor_exp.models.families import adapter_of
from tor_exp.models.flops import layer_flop_terms, model_flops
from tor_exp.models.locations import Schedule
from tor_exp.models.shape import MLP, Attention, Linear, Mamba1

import test_families as shared


@pytest.fixture
def zamba(family_models):
    model, tok, cfg = family_models["zamba"]
    unpatch(model)
    yield model, tok, cfg
    unpatch(model)


@torch.no_grad()
def test_the_ranking_signal_is_every_heads_y_before_the_gate(zamba):
    model = zamba[0]
    block = model.model.layers[2]  # a hybrid layer: its Mamba decoder's mixer ranks
    mixer = block.mamba_decoder.mamba
    assert mixer.n_mamba_heads == 2
    x = torch.randn(2, 19, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    seen: dict = {}
    hooks = [mixer.in_proj.register_forward_hook(lambda _m, _a, out: seen.__setitem__("proj", out)),
             mixer.out_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("gated", args[0]))]
    store: dict = {}
    try:
        plain = mixer(x)
        with adapter_of(model).capture_ranking(block, store):
            captured_run = mixer(x)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(captured_run, plain)
    y = store["ssm_out"]
    assert y.shape == (2, 19, 2 * model.config.hidden_size)
    z = seen["proj"][..., 1::2]  # HF interleaves x and z channel by channel in in_proj's output
    assert (y * F.silu(z) - seen["gated"]).abs().max() <= 1e-5
    assert (y[..., :64] - y[..., 64:]).abs().max() > 1e-3  # two different heads, not one repeated


@torch.no_grad()
def test_padding_never_enters_a_conv_window_with_a_projection_bias(compose):
    from tor_exp.models import load_model

    cfg = compose("model=tiny_zamba", "+model.tiny.config.mamba_proj_bias=true").model
    model, _ = load_model(cfg)
    for layer in model.model.layers:
        mixer = adapter_of(model).mamba_mixer(layer)
        torch.nn.init.normal_(mixer.in_proj.bias, std=0.5, generator=torch.Generator().manual_seed(1))
    ids, mask = random_ids(3, 30, seed=8), padded_mask(3, 30)
    for schedule in (None, Schedule([1, 2], 0.6)):
        if schedule is not None:
            patch(model, shared.build_method(shared.build_cfg("utrc", keep_ratio=0.6)), schedule)
        batch = reduced_forward(model, ids, mask)
        for b in range(3):
            row = mask[b].bool()
            alone = reduced_forward(model, ids[b:b + 1, row])
            n = int(alone.valid.sum())
            assert (batch.logits[b][batch.valid[b]] - alone.logits[0, :n]).abs().max() <= shared.TOL, (schedule, b)
        unpatch(model)


@pytest.mark.parametrize("length", [16, 37])
@torch.no_grad()
def test_analytic_matmul_flops_equal_the_flop_counter(zamba, length):
    """Eager attention. HF's conv computes n + kernel − 1 outputs and keeps n: the ``Mamba1`` part counts n (as for
    Mamba and Jamba), so the counter sees exactly 2·(kernel − 1)·d_inner·kernel more per Mamba layer."""
    model = zamba[0]
    shape = model_shape(model)
    saved = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with counting_flops(model) as counter:
            model(random_ids(1, length), use_cache=False)
    finally:
        model.config._attn_implementation = saved
    mixer = shape.parts(0)[0]
    assert isinstance(mixer, Mamba1) and mixer.d_inner == 128
    conv_tail = 2.0 * (mixer.conv_kernel - 1) * mixer.d_inner * mixer.conv_kernel
    analytic = model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True, reference=True)
    assert analytic + shape.n_layer * conv_tail == counter.get_total_flops()
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    prefix = "ZambaForCausalLM.model.layers.2."
    parts = shape.parts(2)
    assert [type(p) for p in parts] == [Attention, MLP, Linear, Mamba1]
    terms = layer_flop_terms(shape, length, reference=True, layer=2)
    assert sum(terms[t] for t in Attention.matmul_terms if t in terms) == counts[prefix + "shared_transf.self_attn"]
    assert sum(terms[t] for t in MLP.matmul_terms if t in terms) == counts[prefix + "shared_transf.feed_forward"]
    assert terms["linear"] == counts[prefix + "linear"]
    assert sum(terms[t] for t in Mamba1.matmul_terms) + conv_tail == counts[prefix + "mamba_decoder.mamba"]
