"""Each mamba_ssm kernel tor_exp calls, run by triton's interpreter, against a torch reference written here.

The references follow the math (METHOD.md's SSD recurrence, RMSNorm), not tor_exp's or mamba_ssm's code: the scan
in its quadratic "attention" form (every output as a sum over earlier inputs with cumulative decays), the state
update as one step of the recurrence. Tolerances are absolute, on outputs of order 1.
"""
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.kernels


def ssd_reference(x, dt, A, B, C, D=None, z=None, dt_bias=None, softplus=False, h0=None):
    """y [b,l,h,p] and the final state [b,h,p,n] of h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t (+ D x_t,
    · silu(z_t)), computed without a scan: h_t = Σ_{s≤t} exp(Σ_{s<r≤t} dt_r A) dt_s x_s B_s^T (+ decay · h0)."""
    x, dt, B, C = x.double(), dt.double(), B.double(), C.double()
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if softplus:
        dt = F.softplus(dt)
    rep = x.shape[2] // B.shape[2]
    B, C = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)            # [b,l,h,n]
    cum = torch.cumsum(dt * A.double(), dim=1)                                          # [b,l,h]
    length = x.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    decay = torch.exp((cum[:, :, None] - cum[:, None, :]).masked_fill(~causal[None, :, :, None], float("-inf")))
    scores = torch.einsum("bthn,bshn->btsh", C, B) * decay                             # [b,t,s,h]
    y = torch.einsum("btsh,bsh,bshp->bthp", scores, dt, x)
    last = torch.exp(cum[:, -1:] - cum)                                                 # [b,l,h]
    state = torch.einsum("bsh,bsh,bshp,bshn->bhpn", last, dt, x, B)
    if h0 is not None:
        y = y + torch.einsum("bthn,bhpn,bth->bthp", C, h0.double(), torch.exp(cum))
        state = state + h0.double() * torch.exp(cum[:, -1])[..., None, None]
    if D is not None:
        y = y + x * D.double()[None, None, :, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, state


def _scan_inputs(b=2, length=40, h=4, p=8, g=2, n=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(x=r(b, length, h, p).to(dtype), dt=(torch.rand(b, length, h, generator=gen) * 0.4 + 0.02).to(dtype),
                A=-(torch.rand(h, generator=gen) + 0.5), B=r(b, length, g, n).to(dtype), C=r(b, length, g, n).to(dtype))


def test_chunk_scan_equals_the_quadratic_form():
    """3 chunks of 16 (the last one partial), 2 groups: the plain scan and the final state."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    a = _scan_inputs()
    y, state = mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=16,
                                         return_final_states=True)
    ref_y, ref_state = ssd_reference(**a)
    torch.testing.assert_close(y.double(), ref_y, atol=2e-5, rtol=0)
    torch.testing.assert_close(state.double(), ref_state, atol=2e-5, rtol=0)


def test_chunk_scan_with_d_z_bias_softplus_and_initial_state():
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    a = _scan_inputs(seed=1)
    gen = torch.Generator().manual_seed(2)
    D, z, bias = torch.randn(4, generator=gen), torch.randn(2, 40, 4, 8, generator=gen), torch.randn(4, generator=gen)
    h0 = torch.randn(2, 4, 8, 16, generator=gen)
    y = mamba_chunk_scan_combined(a["x"], a["dt"] - 1.0, a["A"], a["B"], a["C"], chunk_size=16, D=D, z=z,
                                  dt_bias=bias, dt_softplus=True, initial_states=h0)
    ref, _ = ssd_reference(a["x"], a["dt"] - 1.0, a["A"], a["B"], a["C"], D=D, z=z, dt_bias=bias, softplus=True,
                           h0=h0)
    torch.testing.assert_close(y.double(), ref, atol=5e-5, rtol=0)


def test_chunk_scan_fp16():
    """fp16 inputs (bf16 is wrong under the interpreter, so it is not tested here: docs/install.md)."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    a = _scan_inputs(b=1, length=32, seed=3, dtype=torch.float16)
    y = mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=16)
    assert y.dtype == torch.float16
    ref, _ = ssd_reference(**a)
    torch.testing.assert_close(y.double(), ref, atol=3e-2, rtol=1e-2)


def state_step_reference(state, x, dt, A, B, C, D, z, dt_bias):
    """One recurrence step, per channel: h' = exp(softplus(dt + bias) A) h + softplus(dt + bias) x B^T;
    y = h' C + D x, gated by silu(z). Shapes as selective_state_update's (heads optional)."""
    dt = F.softplus(dt.double() + dt_bias.double())
    new = state.double() * torch.exp(dt[..., None] * A.double()) + (dt * x.double())[..., None] * B.double()
    y = (new * C.double()).sum(-1) + D.double() * x.double()
    return y * F.silu(z.double()), new


@pytest.mark.parametrize("form", ["mamba2_heads", "mamba1_channels"])
def test_selective_state_update(form):
    """The two layouts static_decode passes: Mamba-2 [b,h,p,n] with grouped B/C (tied per head), Mamba-1 [b,d,n]."""
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    gen = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    b, n = 2, 16
    if form == "mamba2_heads":
        h, p, g = 4, 8, 2
        state, x, z = r(b, h, p, n), r(b, h, p), r(b, h, p)
        dt = r(b, h)[..., None].expand(-1, -1, p)
        A = (-(torch.rand(h, generator=gen) + 0.5))[:, None, None].expand(-1, p, n)
        D, bias = r(h)[:, None].expand(-1, p), r(h)[:, None].expand(-1, p)
        B, C = r(b, g, n), r(b, g, n)
        Bx, Cx = B.repeat_interleave(h // g, 1)[:, :, None], C.repeat_interleave(h // g, 1)[:, :, None]
    else:
        d = 24
        state, x, z, dt = r(b, d, n), r(b, d), r(b, d), r(b, d)
        A, D, bias = -(torch.rand(d, n, generator=gen) + 0.5), r(d), r(d)
        B, C = r(b, n), r(b, n)
        Bx, Cx = B[:, None], C[:, None]
    ref_y, ref_state = state_step_reference(state, x, dt, A, Bx, Cx, D, z, bias)
    kernel_state = state.clone()
    y = selective_state_update(kernel_state, x, dt, A, B, C, D, z=z, dt_bias=bias, dt_softplus=True)
    torch.testing.assert_close(y.double(), ref_y, atol=2e-5, rtol=0)
    torch.testing.assert_close(kernel_state.double(), ref_state, atol=2e-5, rtol=0)


def test_rms_norm_fn_with_residual():
    """The fused add + RMSNorm of the decode step: (norm(x + residual) · w, x + residual in fp32)."""
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn

    gen = torch.Generator().manual_seed(5)
    x, res, w = torch.randn(3, 48, generator=gen), torch.randn(3, 48, generator=gen), torch.randn(48, generator=gen)
    out, new_res = rms_norm_fn(x, w, None, residual=res, prenorm=True, residual_in_fp32=True, eps=1e-5)
    s = x.double() + res.double()
    ref = s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(new_res.double(), s, atol=1e-6, rtol=0)
    assert new_res.dtype == torch.float32


def test_gated_group_rmsnorm():
    """Mamba-2's gated norm: RMSNorm over each group of channels of y · silu(z) (norm after the gate)."""
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

    gen = torch.Generator().manual_seed(6)
    y, z, w = torch.randn(2, 64, generator=gen), torch.randn(2, 64, generator=gen), torch.randn(64, generator=gen)
    out = rmsnorm_fn(y, w, None, z=z, eps=1e-5, group_size=32, norm_before_gate=False)
    gated = (y.double() * F.silu(z.double())).view(2, 2, 32)
    ref = (gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5)).view(2, 64) * w.double()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
