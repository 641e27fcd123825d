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


def _fused_kernels(device: torch.device) -> tuple[Optional[Callable], Optional[Callable]]:
    """(selective_state_update, causal_conv1d_update) from mamba_ssm / causal_conv1d when usable (CUDA only)."""
    if device.type != "cuda":
        return None, None
    ssu = conv = None
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as ssu
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        ssu = None
    try:
        from causal_conv1d import causal_conv1d_update as conv
    except Exception:  # noqa: BLE001
        conv = None
    return ssu, conv


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


def mamba2_mixer_step(mixer: Any, x: Tensor, conv_state: Tensor, ssm_state: Tensor,
                      kernels: tuple[Optional[Callable], Optional[Callable]] = (None, None)) -> Tensor:
    """A HF ``Mamba2Mixer`` on one token x [B, D] (its 1-token decode path, without the cache object)."""
    ssu, conv_kernel = kernels
    batch = x.shape[0]
    inner, heads, head_dim = mixer.intermediate_size, mixer.num_heads, mixer.head_dim
    groups, n = mixer.n_groups, mixer.ssm_state_size
    proj = mixer.in_proj(x)
    gate, xbc, dt = proj.split([inner, mixer.conv_dim, heads], dim=-1)
    weight = mixer.conv1d.weight.squeeze(1)
    if conv_kernel is not None:
        xbc = conv_kernel(xbc, conv_state, weight, mixer.conv1d.bias, mixer.activation)
    else:
        xbc = mixer.act(conv_step(xbc, conv_state, weight, mixer.conv1d.bias))
    xs, B, C = xbc.split([inner, groups * n, groups * n], dim=-1)
    A = -torch.exp(mixer.A_log.float())
    if ssu is not None:
        y = ssu(ssm_state, xs.view(batch, heads, head_dim), dt[:, :, None].expand(-1, -1, head_dim),
                A[:, None, None].expand(-1, head_dim, n), B.view(batch, groups, n), C.view(batch, groups, n),
                mixer.D[:, None].expand(-1, head_dim), z=None,
                dt_bias=mixer.dt_bias[:, None].expand(-1, head_dim), dt_softplus=True)
    else:
        dt = F.softplus(dt + mixer.dt_bias.to(dt.dtype))
        y = ssd_state_step(ssm_state, xs.view(batch, heads, head_dim), dt, A, B.view(batch, groups, n),
                           C.view(batch, groups, n), mixer.D)
    y = mixer.norm(y.reshape(batch, 1, inner), gate.unsqueeze(1))
    return mixer.out_proj(y.to(x.dtype)).squeeze(1)


def mamba1_mixer_step(mixer: Any, x: Tensor, conv_state: Tensor, ssm_state: Tensor,
                      kernels: tuple[Optional[Callable], Optional[Callable]] = (None, None)) -> Tensor:
    """A HF ``MambaMixer`` (Mamba-1) on one token x [B, D]; ``ssm_state`` [B, E, N] updated in place."""
    _, conv_kernel = kernels
    inner, n = mixer.intermediate_size, mixer.ssm_state_size
    xs, z = mixer.in_proj(x).chunk(2, dim=-1)
    weight = mixer.conv1d.weight.squeeze(1)
    if conv_kernel is not None:
        xs = conv_kernel(xs, conv_state, weight, mixer.conv1d.bias, mixer.activation)
    else:
        xs = mixer.act(conv_step(xs, conv_state, weight, mixer.conv1d.bias))
    dt, B, C = mixer.x_proj(xs).split([mixer.time_step_rank, n, n], dim=-1)
    dt = F.softplus(mixer.dt_proj(dt)).float()                     # [B, E]
    A = -torch.exp(mixer.A_log.float())                            # [E, N]
    new = ssm_state.float() * torch.exp(dt[..., None] * A) + (dt * xs.float())[..., None] * B.float()[:, None, :]
    ssm_state.copy_(new.to(ssm_state.dtype))
    y = torch.einsum("ben,bn->be", new, C.float()) + xs.float() * mixer.D.float()
    y = (y * mixer.act(z.float())).to(x.dtype)
    return mixer.out_proj(y)


class StaticDecoder:
    """Greedy decode with fixed state buffers; ``graph=True`` captures one step in a CUDA graph on first use.

    ``load(states, first_token)`` copies a prefill's states into the buffers; ``run(n)`` returns the next n
    greedy tokens [B, n] (the step writes its argmax into the input buffer, so replay needs no host work).
    """

    def __init__(self, model: Any, states: LayerStates, *, graph: bool = False, fused: bool = True):
        self.model = model
        backbone = model.backbone
        self.backbone = backbone
        self.family = "mamba2" if hasattr(backbone.layers[0].mixer, "num_heads") else "mamba"
        self.step_fn = mamba2_mixer_step if self.family == "mamba2" else mamba1_mixer_step
        device = next(model.parameters()).device
        self.device = device
        self.kernels = _fused_kernels(device) if fused else (None, None)
        # static buffers shaped like the prefill's states (the prefill's own tensors are never written to)
        self.conv = [c.detach().clone() for c in states.conv]
        self.ssm = [s.detach().clone() for s in states.ssm]
        self.batch_size = self.conv[0].shape[0]
        self.ids = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        self.use_graph = bool(graph) and device.type == "cuda"
        self._graph: Any = None
        self.logits: Optional[Tensor] = None

    @property
    def graphed(self) -> bool:
        return self._graph is not None

    def load(self, states: LayerStates, first_token: Tensor) -> None:
        for dst, src in zip(self.conv, states.conv):
            dst.copy_(src)
        for dst, src in zip(self.ssm, states.ssm):
            dst.copy_(src)
        self.ids.copy_(first_token.reshape(-1))

    @torch.no_grad()
    def _step(self) -> None:
        h = self.backbone.embeddings(self.ids)
        for i, block in enumerate(self.backbone.layers):
            residual = h
            x = block.norm(h.to(block.norm.weight.dtype))
            if getattr(block, "residual_in_fp32", False):
                residual = residual.to(torch.float32)
            h = residual + self.step_fn(block.mixer, x, self.conv[i], self.ssm[i], self.kernels)
        h = self.backbone.norm_f(h)
        logits = self.model.lm_head(h.to(self.model.lm_head.weight.dtype))
        self.logits = logits  # the graph's static output; read after run() for checks
        self.ids.copy_(logits.argmax(dim=-1))

    def _capture(self) -> None:
        """Warm up on a side stream (Triton compiles there), capture one step, restore the buffers."""
        saved = ([c.clone() for c in self.conv], [s.clone() for s in self.ssm], self.ids.clone())
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self.load(LayerStates(saved[0], saved[1]), saved[2])
        self._graph = graph

    @torch.no_grad()
    def run(self, n_tokens: int) -> Tensor:
        """The next ``n_tokens`` greedy tokens after the loaded first token, [B, n_tokens]."""
        if self.use_graph and self._graph is None:
            self._capture()
        out = torch.empty(self.batch_size, n_tokens, dtype=torch.long, device=self.device)
        for t in range(n_tokens):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step()
            out[:, t] = self.ids
        return out


def hf_decode(model: Any, cache: Any, first_token: Tensor, n_tokens: int) -> Tensor:
    """Greedy decode through the model's own forward, one token per call (the slow reference path)."""
    tokens = []
    ids = first_token.reshape(-1, 1)
    with torch.no_grad():
        for _ in range(n_tokens):
            try:
                out = model(input_ids=ids, cache=cache, use_cache=True)
            except TypeError:  # older transformers name the argument cache_params
                out = model(input_ids=ids, cache_params=cache, use_cache=True)
            cache = getattr(out, "cache", None) or getattr(out, "cache_params", None) or cache
            ids = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens.append(ids)
    return torch.cat(tokens, dim=1) if tokens else first_token.new_zeros(first_token.shape[0], 0)
