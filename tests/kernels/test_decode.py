"""StaticDecoder with mamba_ssm's real kernels (state update, fused add + RMSNorm, gated norm): the same greedy
tokens as its torch step and as ``model.generate``, and logits within float tolerance of the torch step."""
import pytest
import torch

from tor_exp.models import ModelConfig, TinyModelConfig, load_model
from tor_exp.models.static_decode import FusedOps, StaticDecoder, states_from_cache

pytestmark = pytest.mark.kernels


def _real_ops(family: str) -> FusedOps:
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    if family == "mamba":
        return FusedOps(ssu=selective_state_update)
    return FusedOps(ssu=selective_state_update, add_norm=rms_norm_fn, gated_norm=rmsnorm_fn)


@pytest.mark.parametrize("family", ["mamba2", "mamba"])
@torch.no_grad()
def test_static_decoder_with_real_kernels(family):
    cfg = ModelConfig(family=family, n_layer=2, locations=[0],
                      tiny=TinyModelConfig(d_model=32, n_layer=2, chunk_size=16, head_dim=8, state_size=8,
                                           n_groups=2 if family == "mamba2" else 1))
    model, _ = load_model(cfg)
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(1))
    out = model(input_ids=ids, use_cache=True)
    states, first = states_from_cache(out.cache, 2), out.logits[:, -1].argmax(-1)
    plain = StaticDecoder(model, states, fused=False)
    fused = StaticDecoder(model, states, ops=_real_ops(family))
    assert "fallback_reason" not in fused.kernel_info, fused.kernel_info
    assert fused.kernel_info["ssm_update"] == "mamba_ssm"
    assert fused.kernel_info["norms"] == ("mamba_ssm" if family == "mamba2" else "torch")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         pad_token_id=0)[:, 13:]
    for dec in (plain, fused):
        dec.load(states, first)
        assert torch.equal(torch.cat([first[:, None], dec.run(4)], dim=1), ref)
    torch.testing.assert_close(fused.logits, plain.logits, atol=1e-4, rtol=0)
