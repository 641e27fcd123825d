"""LFM2 specifics the shared family tests do not reach: the ranking signal is the gated conv output C·conv(B·x)
that ``out_proj`` receives; padding never enters a conv window even with ``conv_bias`` (where HF's own masking of
the input would leave the projection's bias); the FLOP shape's matmul terms equal torch's counter on HF's forward."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from family_cases import padded_mask, random_ids
from tor_exp.models import model_shape, reduced_forward, unpatch
from tor_exp.models.families import adapter_of
from tor_exp.models.flops import model_flops
from tor_exp.models.locations import Schedule

import test_families as shared


@pytest.fixture(scope="module")
def biased_model(compose):
    from tor_exp.models import load_model

    cfg = compose("model=tiny_lfm2", "+model.tiny.config.conv_bias=true").model
    model, tok = load_model(cfg)
    assert model.model.layers[0].conv.in_proj.bias is not None
    return model, tok, cfg


@torch.no_grad()
def test_captured_signal_is_what_out_proj_receives(family_models):
    model = family_models["lfm2"][0]
    unpatch(model)
    block = model.model.layers[3]
    x = torch.randn(2, 21, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    seen = {}
    handle = block.conv.in_proj.register_forward_hook(lambda _m, _a, out: seen.__setitem__("bcx", out))
    store: dict = {}
    try:
        plain = block.conv(x)
        with adapter_of(model).capture_ranking(block, store):
            captured_run = block.conv(x)
    finally:
        handle.remove()
    assert torch.equal(captured_run, plain)
    y = store["ssm_out"]
    assert y.shape == (2, 21, model.config.hidden_size)
    # independently: C ∘ causal depthwise conv(B ∘ x) from the projection, with torch's conv1d
    b, c, v = seen["bcx"].transpose(1, 2).chunk(3, dim=1)
    k = block.conv.conv.weight.shape[-1]
    conv = torch.nn.functional.conv1d(torch.nn.functional.pad(b * v, (k - 1, 0)), block.conv.conv.weight,
                                      groups=model.config.hidden_size)
    assert (y - (c * conv).transpose(1, 2)).abs().max() <= 1e-5
    assert adapter_of(model).capture_ranking(model.model.layers[2], store) is None  # attention ranks nothing


@torch.no_grad()
def test_padding_never_enters_a_conv_window_with_a_conv_bias(biased_model):
    """Left-padded and right-padded rows equal each row alone, unreduced and reduced."""
    model, tok, cfg = biased_model
    ids, mask = random_ids(3, 30, seed=8), padded_mask(3, 30)
    for schedule in (None, Schedule([1, 5], 0.6)):
        from tor_exp.models import patch

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
def test_analytic_flops_match_the_flop_counter(family_models, length):
    """Under eager attention FlopCounterMode sees every matmul-like op of HF's forward (parameters frozen: the
    counter's module tracker cannot hook a view of a parameter made under no_grad on transformers 5.25)."""
    model = family_models["lfm2"][0]
    unpatch(model)
    shape = model_shape(model)
    implementation, flags = model.config._attn_implementation, [(p, p.requires_grad) for p in model.parameters()]
    model.config._attn_implementation = "eager"
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            model(random_ids(1, length), use_cache=False)
    finally:
        model.config._attn_implementation = implementation
        for p, flag in flags:
            p.requires_grad_(flag)
    analytic = model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True, reference=True)
    assert analytic == counter.get_total_flops()
