"""Fast greedy decode for the generate benchmark: a static single-token Mamba-2 step, optionally CUDA-graphed.

HF's eager decode re-enters Python for every module of every layer per token (44 ms/token at batch 16 for a
2.7B-shaped Mamba-2 on an H100), which hides any prefill gain. :class:`StaticDecoder` instead keeps every
layer's conv and SSM state in fixed buffers, runs one token through the model's own modules (norms,
projections, gated norm, LM head) with the conv / SSM recurrences written here (or mamba_ssm's and
causal_conv1d's fused kernels when they are importable on CUDA), and writes the argmax back into its input
buffer, so a whole greedy step is one replayable CUDA graph (as mamba_ssm's ``cg=True`` does).

Reduction never runs here: decode sees one token at a time and starts from the states the (reduced) prefill
left behind. On CPU the same step runs eagerly; that path is tested to reproduce ``model.generate`` greedy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LayerStates:
    """Per-layer recurrent state after a prefill: conv inputs [B, C, K] and SSM states [B, H, P, N] (or [B, E, N])."""

    conv: list[Tensor]
    ssm: list[Tensor]


def states_from_cache(cache: Any, n_layer: int) -> LayerStates:
    """Read the per-layer states out of a HF cache (transformers 5.x ``cache.layers[i].conv_states[0]``)
    or a mamba_ssm ``InferenceParams`` (``key_value_memory_dict[i] = (conv, ssm)``)."""
    if hasattr(cache, "key_value_memory_dict"):
        pairs = [cache.key_value_memory_dict[i] for i in range(n_layer)]
        return LayerStates([p[0] for p in pairs], [p[1] for p in pairs])
    if hasattr(cache, "layers"):
        return LayerStates([cache.layers[i].conv_states[0] for i in range(n_layer)],
                           [cache.layers[i].recurrent_states[0] for i in range(n_layer)])
    if hasattr(cache, "conv_states") and hasattr(cache, "ssm_states"):  # older transformers MambaCache
        return LayerStates([cache.conv_states[i] for i in range(n_layer)], [cache.ssm_states[i] for i in range(n_layer)])
    raise TypeError(f"cannot read conv/SSM states from a {type(cache).__name__}")


@dataclass
class FusedOps:
    """GPU kernels the step can use instead of its torch ops (None = torch). Resolved from mamba_ssm's Triton
    kernels (what mamba_ssm's own ``step`` uses) and causal_conv1d's CUDA update, when importable."""

    ssu: Optional[Callable] = None          # mamba_ssm selective_state_update
    conv: Optional[Callable] = None         # causal_conv1d_update
    add_norm: Optional[Callable] = None     # mamba_ssm rms_norm_fn (residual add + RMSNorm in one kernel)
    gated_norm: Optional[Callable] = None   # mamba_ssm rmsnorm_fn (gated, grouped RMSNorm)

    def describe(self) -> dict[str, str]:
        return {"ssm_update": "mamba_ssm" if self.ssu else "torch", "conv_update": "causal_conv1d" if self.conv
                else "torch", "norms": "mamba_ssm" if self.add_norm and self.gated_norm else "torch"}


def fused_ops(device: torch.device) -> FusedOps:
    """The fused kernels importable here (all None on CPU, or when the packages are missing)."""
    ops = FusedOps()
    if device.type != "cuda":
        return ops
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        ops.ssu = selective_state_update
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        pass
    try:
        from causal_conv1d import causal_conv1d_update

        ops.conv = causal_conv1d_update
    except Exception:  # noqa: BLE001
        pass
    try:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

        ops.add_norm, ops.gated_norm = rms_norm_fn, rmsnorm_fn
    except Exception:  # noqa: BLE001
        pass
    return ops


def conv_step(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Depthwise causal conv for one new input column x [B, C]: shifts ``conv_state`` [B, C, K] in place."""
    conv_state.copy_(torch.cat([conv_state[..., 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    out = (conv_state.to(weight.dtype) * weight).sum(dim=-1)
    if bias is not None:
        out = out + bias
    return out.to(x.dtype)


def ssd_state_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """One Mamba-2 recurrence step; ``state`` [B, H, P, N] updated in place.

    x [B, H, P]; dt [B, H] (after bias + softplus); A [H]; B, C [B, G, N]; D [H]. Returns y [B, H, P].
    """
    batch, heads, _ = x.shape
    groups = B.shape[1]
    rep = heads // groups
    Bh = B.repeat_interleave(rep, dim=1).float()                   # [B, H, N]
    Ch = C.repeat_interleave(rep, dim=1).float()
    dtf = dt.float()
    decay = torch.exp(dtf * A.float())[..., None, None]            # [B, H, 1, 1]
    new = state.float() * decay + (dtf[..., None, None] * x.float()[..., None]) * Bh[:, :, None, :]
    state.copy_(new.to(state.dtype))
    y = torch.einsum("bhpn,bhn->bhp", new, Ch) + x.float() * D.float()[None, :, None]
    return y.to(x.dtype)


def mamba2_mixer_step(mixer: Any, x: Tensor, conv_state: Tensor, ssm_state: Tensor, ops: FusedOps = FusedOps(),
                      A: Optional[Tensor] = None) -> Tensor:
    """A HF ``Mamba2Mixer`` on one token x [B, D] (its 1-token decode path, without the cache object).

    ``A`` = −exp(A_log) may be passed precomputed (it is constant; saves kernels per step).
    """
    batch = x.shape[0]
    inner, heads, head_dim = mixer.intermediate_size, mixer.num_heads, mixer.head_dim
    groups, n = mixer.n_groups, mixer.ssm_state_size
    proj = mixer.in_proj(x)
    gate, xbc, dt = proj.split([inner, mixer.conv_dim, heads], dim=-1)
    weight = mixer.conv1d.weight.squeeze(1)
    if ops.conv is not None:
        xbc = ops.conv(xbc, conv_state, weight, mixer.conv1d.bias, mixer.activation)
    else:
        xbc = mixer.act(conv_step(xbc, conv_state, weight, mixer.conv1d.bias))
    xs, B, C = xbc.split([inner, groups * n, groups * n], dim=-1)
    if A is None:
        A = -torch.exp(mixer.A_log.float())
    if ops.ssu is not None:
        y = ops.ssu(ssm_state, xs.view(batch, heads, head_dim), dt[:, :, None].expand(-1, -1, head_dim),
                    A[:, None, None].expand(-1, head_dim, n), B.view(batch, groups, n), C.view(batch, groups, n),
                    mixer.D[:, None].expand(-1, head_dim), z=None,
                    dt_bias=mixer.dt_bias[:, None].expand(-1, head_dim), dt_softplus=True)
    else:
        dt = F.softplus(dt + mixer.dt_bias.to(dt.dtype))
        y = ssd_state_step(ssm_state, xs.view(batch, heads, head_dim), dt, A, B.view(batch, groups, n),
                           C.view(batch, groups, n), mixer.D)
    if ops.gated_norm is not None:
        y = ops.gated_norm(y.reshape(batch, inner), mixer.norm.weight, None, z=gate,
                           eps=mixer.norm.variance_epsilon, group_size=inner // groups, norm_before_gate=False)
    else:
        y = mixer.norm(y.reshape(batch, 1, inner), gate.unsqueeze(1)).squeeze(1)
    return mixer.out_proj(y.to(x.dtype))


def mamba1_mixer_step(mixer: Any, x: Tensor, conv_state: Tensor, ssm_state: Tensor, ops: FusedOps = FusedOps(),
                      A: Optional[Tensor] = None) -> Tensor:
    """A HF ``MambaMixer`` (Mamba-1) on one token x [B, D]; ``ssm_state`` [B, E, N] updated in place."""
    n = mixer.ssm_state_size
    xs, z = mixer.in_proj(x).chunk(2, dim=-1)
    weight = mixer.conv1d.weight.squeeze(1)
    if ops.conv is not None:
        xs = ops.conv(xs, conv_state, weight, mixer.conv1d.bias, mixer.activation)
    else:
        xs = mixer.act(conv_step(xs, conv_state, weight, mixer.conv1d.bias))
    dt, B, C = mixer.x_proj(xs).split([mixer.time_step_rank, n, n], dim=-1)
    if A is None:
        A = -torch.exp(mixer.A_log.float())                        # [E, N]
    if ops.ssu is not None:
        y = ops.ssu(ssm_state, xs, F.linear(dt, mixer.dt_proj.weight), A, B, C, mixer.D.float(), z=z,
                    dt_bias=mixer.dt_proj.bias.float(), dt_softplus=True)
        return mixer.out_proj(y.to(x.dtype))
    dt = F.softplus(mixer.dt_proj(dt)).float()                     # [B, E]
    new = ssm_state.float() * torch.exp(dt[..., None] * A) + (dt * xs.float())[..., None] * B.float()[:, None, :]
    ssm_state.copy_(new.to(ssm_state.dtype))
    y = torch.einsum("ben,bn->be", new, C.float()) + xs.float() * mixer.D.float()
    y = (y * mixer.act(z.float())).to(x.dtype)
    return mixer.out_proj(y)


class StaticDecoder:
    """Greedy decode with fixed state buffers; ``graph=True`` captures one step in a CUDA graph on first use.

    ``load(states, first_token)`` copies a prefill's states into the buffers; ``run(n)`` returns the next n
    greedy tokens [B, n] (the step writes its argmax into the input buffer, so replay needs no host work).
    ``fused``: use mamba_ssm / causal_conv1d kernels where importable (CUDA only). They are checked once
    against the torch step on the first layer; on any mismatch or error the torch ops are used and
    ``kernel_info["fallback_reason"]`` says why. ``ops`` overrides the resolved kernels (tests use it).
    """

    def __init__(self, model: Any, states: LayerStates, *, graph: bool = False, fused: bool = True,
                 ops: Optional[FusedOps] = None):
        self.model = model
        backbone = model.backbone
        self.backbone = backbone
        from tor_exp.models.families import model_shape
        from tor_exp.models.shape import Mamba2

        # the mixer kind from the model's layer parts (every layer of a statically decodable model is one mixer)
        self.mamba2 = isinstance(model_shape(model).parts(0)[0], Mamba2)
        self.step_fn = mamba2_mixer_step if self.mamba2 else mamba1_mixer_step
        device = next(model.parameters()).device
        self.device = device
        self.ops = ops if ops is not None else (fused_ops(device) if fused else FusedOps())
        if not self.mamba2:  # the gated/grouped norm kernels are Mamba-2 only
            self.ops.add_norm = self.ops.gated_norm = None
        # A = −exp(A_log) is constant: computed once, not per step
        self.A = [-torch.exp(block.mixer.A_log.detach().float()) for block in backbone.layers]
        # static buffers shaped like the prefill's states (the prefill's own tensors are never written to)
        self.conv = [c.detach().clone() for c in states.conv]
        self.ssm = [s.detach().clone() for s in states.ssm]
        self.batch_size = self.conv[0].shape[0]
        self.ids = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        self.use_graph = bool(graph) and device.type == "cuda"
        self._graph: Any = None
        self.logits: Optional[Tensor] = None
        self.kernel_info: dict[str, Any] = {}
        if self.ops != FusedOps():
            self._check_fused()
        self.kernel_info.update(self.ops.describe())

    @property
    def graphed(self) -> bool:
        return self._graph is not None

    @torch.no_grad()
    def _check_fused(self) -> None:
        """One layer, fused vs torch ops, on copies of the buffers: fall back to torch on any disagreement."""
        block = self.backbone.layers[0]
        dtype = block.norm.weight.dtype
        gen = torch.Generator(device=self.device).manual_seed(0)
        x = torch.randn(self.batch_size, self.backbone.embeddings.embedding_dim, device=self.device,
                        generator=gen).to(dtype)
        outs, states = [], []
        try:
            for ops in (FusedOps(), self.ops):
                conv, ssm = self.conv[0].clone(), self.ssm[0].clone()
                normed = block.norm(x) if ops.add_norm is None else ops.add_norm(
                    x, block.norm.weight, None, eps=block.norm.variance_epsilon)
                outs.append(self.step_fn(block.mixer, normed, conv, ssm, ops, self.A[0]).float())
                states.append(ssm.float())
            # a wrong calling convention gives O(1) errors; bf16 rounding of two op orders stays far below 0.1
            limit = 0.1 if dtype in (torch.bfloat16, torch.float16) else 5e-4
            scale = outs[0].abs().max().clamp(min=1e-6)
            err = float(((outs[1] - outs[0]).abs().max() / scale))
            serr = float(((states[1] - states[0]).abs().max() / states[0].abs().max().clamp(min=1e-6)))
            self.kernel_info["fused_check_rel_err"] = max(err, serr)
            if not (err <= limit and serr <= limit):
                raise ValueError(f"fused step differs from the torch step (rel. err {err:.2e}, state {serr:.2e})")
        except Exception as exc:  # noqa: BLE001 - never fail the benchmark over an optional kernel
            self.kernel_info["fallback_reason"] = f"{type(exc).__name__}: {exc}"[:300]
            self.ops = FusedOps()

    def load(self, states: LayerStates, first_token: Tensor) -> None:
        for dst, src in zip(self.conv, states.conv):
            dst.copy_(src)
        for dst, src in zip(self.ssm, states.ssm):
            dst.copy_(src)
        self.ids.copy_(first_token.reshape(-1))

    @torch.no_grad()
    def _step(self) -> None:
        h = self.backbone.embeddings(self.ids)
        ops = self.ops
        if ops.add_norm is not None:
            # mamba_ssm layout: (mixer output, fp32 residual) pairs, add + norm fused into one kernel
            residual = None
            for i, block in enumerate(self.backbone.layers):
                x, residual = ops.add_norm(h, block.norm.weight, None, residual=residual, prenorm=True,
                                           residual_in_fp32=True, eps=block.norm.variance_epsilon)
                h = self.step_fn(block.mixer, x, self.conv[i], self.ssm[i], ops, self.A[i])
            norm_f = self.backbone.norm_f
            h, _ = ops.add_norm(h, norm_f.weight, None, residual=residual, prenorm=True, residual_in_fp32=True,
                                eps=norm_f.variance_epsilon)
        else:
            for i, block in enumerate(self.backbone.layers):
                residual = h
                x = block.norm(h.to(block.norm.weight.dtype))
                if getattr(block, "residual_in_fp32", False):
                    residual = residual.to(torch.float32)
                h = residual + self.step_fn(block.mixer, x, self.conv[i], self.ssm[i], ops, self.A[i])
            h = self.backbone.norm_f(h)
        logits = self.model.lm_head(h.to(self.model.lm_head.weight.dtype))
        self.logits = logits  # the graph's static output; read after run() for checks
        self.ids.copy_(logits.argmax(dim=-1))

    def _capture(self) -> None:
        """Warm up on a side stream (Triton compiles there), capture one step, restore the buffers."""
        saved = ([c.clone() for c in self.conv], [s.clone() for s in self.ssm], self.ids.clone())
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step()
            self._graph = graph
        finally:
            self.load(LayerStates(saved[0], saved[1]), saved[2])

    @torch.no_grad()
    def run(self, n_tokens: int) -> Tensor:
        """The next ``n_tokens`` greedy tokens after the loaded first token, [B, n_tokens]."""
        if self.use_graph and self._graph is None:
            try:
                self._capture()
            except Exception as exc:  # noqa: BLE001 - fall back to eager steps, and say so
                self.kernel_info["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
                self.use_graph = False
        self.kernel_info["cuda_graph"] = self._graph is not None
        out = torch.empty(self.batch_size, n_tokens, dtype=torch.long, device=self.device)
        for t in range(n_tokens):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step()
            out[:, t] = self.ids
        return out
