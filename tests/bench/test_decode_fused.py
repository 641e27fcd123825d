"""The fused-kernel calling conventions of the decode step, checked on CPU with torch stand-ins written here
from mamba_ssm's documented semantics (the real Triton kernels only run on a GPU)."""
import pytest
import torch
import torch.nn.functional as F

from tor_exp.models.static_decode import FusedOps, StaticDecoder, states_from_cache
from tor_exp.models import ModelConfig, TinyModelConfig, load_model


def ref_ssu(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """selective_state_update: state (b, [h,] p, n); x, dt (b, [h,] p); A ([h,] p, n); B, C (b, [g,] n)."""
    heads = state.dim() == 4
    if not heads:
        state, x, dt, A, B, C = state[:, None], x[:, None], dt[:, None], A[None], B[:, None], C[:, None]
        D = None if D is None else D[None]
        z = None if z is None else z[:, None]
        dt_bias = None if dt_bias is None else dt_bias[None]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    rep = state.shape[1] // B.shape[1]
    Bh, Ch = B.repeat_interleave(rep, 1), C.repeat_interleave(rep, 1)
    new = state.float() * torch.exp(dt.float()[..., None] * A.float()) + (dt * x).float()[..., None] * Bh[:, :, None].float()
    state.copy_(new)
    out = (new * Ch[:, :, None].float()).sum(-1)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(x.dtype)
    return out if heads else out[:, 0]


def ref_add_norm(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False, **_):
    r = x.float() if residual is None else residual.float() + x.float()
    out = (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
    return (out, r) if prenorm else out


def ref_gated_norm(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    assert not norm_before_gate
    h = x.float() * F.silu(z.float())
    g = h.view(*h.shape[:-1], -1, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return (g.view_as(h) * weight.float()).to(x.dtype)


def _setup(family, n_layer=3):
    cfg = ModelConfig(family=family, n_layer=n_layer, locations=[1],
                      tiny=TinyModelConfig(d_model=32, n_layer=n_layer, chunk_size=16, head_dim=8, state_size=8,
                                           n_groups=2 if family == "mamba2" else 1))
    model, _ = load_model(cfg)
    ids = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    return model, ids, out


@pytest.mark.parametrize("family", ["mamba2", "mamba"])
def test_fused_conventions_reproduce_torch_step(family):
    model, ids, out = _setup(family)
    states = states_from_cache(out.cache, 3)
    first = out.logits[:, -1].argmax(-1)
    ops = FusedOps(ssu=ref_ssu, add_norm=ref_add_norm if family == "mamba2" else None,
                   gated_norm=ref_gated_norm if family == "mamba2" else None)
    plain = StaticDecoder(model, states, fused=False)
    fused = StaticDecoder(model, states, ops=ops)
    assert "fallback_reason" not in fused.kernel_info
    assert fused.kernel_info["ssm_update"] == "mamba_ssm"
    assert fused.kernel_info["norms"] == ("mamba_ssm" if family == "mamba2" else "torch")
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)[:, 21:]
    for dec in (plain, fused):
        dec.load(states, first)
        toks = torch.cat([first[:, None], dec.run(5)], dim=1)
        assert torch.equal(toks, ref)
    torch.testing.assert_close(fused.logits, plain.logits, rtol=1e-4, atol=1e-5)


def test_wrong_fused_kernel_falls_back_to_torch():
    model, _, out = _setup("mamba2")
    states = states_from_cache(out.cache, 3)

    def gate_ignored(x, weight, bias, z=None, **kw):
        return ref_gated_norm(x, weight, bias, z=torch.full_like(z, 10.0), **kw)

    dec = StaticDecoder(model, states, ops=FusedOps(ssu=ref_ssu, add_norm=ref_add_norm, gated_norm=gate_ignored))
    assert "differs" in dec.kernel_info["fallback_reason"]
    assert dec.ops == FusedOps() and dec.kernel_info["norms"] == "torch"
