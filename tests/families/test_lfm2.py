"""LFM2 specifics the shared family tests do not reach: the FLOP shape equals torch's FLOP counter, the ranking signal
is the gated conv output C·conv(B·x) before out_proj, and a config with conv biases (padding would enter the conv
window) is refused with one line."""
from __future__ import annotations

import pytest
import torch

from family_cases import random_ids
from test_qwen3_next import counting
from tor_exp.errors import ConfigError
from tor_exp.models import model_shape, unpatch
from tor_exp.models.families.capture import capture_input
from tor_exp.models.flops import model_flops


@pytest.mark.parametrize("length", [37, 100])
def test_analytic_matmul_flops_equal_the_flop_counter(family_models, length):
    model = family_models["lfm2"][0]
    unpatch(model)
    shape = model_shape(model)
    with counting(model) as counter:
        model(random_ids(1, length), use_cache=False)
    assert model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True,
                       reference=True) == counter.get_total_flops()


@torch.no_grad()
def test_the_ranking_signal_is_the_gated_conv_output(family_models):
    """C·conv(B·x) rebuilt from HF's own in_proj and conv weights (no cache, causal, depthwise) equals the capture."""
    model = family_models["lfm2"][0]
    conv = model.model.layers[0].conv
    x = torch.randn(2, 15, model.config.hidden_size)
    store: dict = {}
    with capture_input(conv.out_proj, store):
        conv(x)
    b, c, h = conv.in_proj(x).chunk(3, dim=-1)
    k = conv.conv.kernel_size[0]
    bx = torch.nn.functional.pad((b * h).transpose(1, 2), (k - 1, 0))
    convolved = torch.nn.functional.conv1d(bx, conv.conv.weight, groups=bx.shape[1]).transpose(1, 2)
    assert (store["ssm_out"] - c * convolved).abs().max() <= 1e-6


def test_conv_biases_are_refused(compose):
    with pytest.raises(ConfigError, match=r"^model family lfm2: conv_bias=true .* padding would enter a conv window"):
        from tor_exp.models.loading import shape_from_model_config

        shape_from_model_config(compose("model=tiny_lfm2", "+model.tiny.config.conv_bias=true").model)
