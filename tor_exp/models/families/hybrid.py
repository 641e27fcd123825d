"""What every hybrid SSM–attention family on HF transformers shares: calling a HF decoder layer on a reduced,
padded token sequence (METHOD.md §7).

A hybrid's decoder layer returns one stream (``input + its sublayers' updates``), so :meth:`HybridFamily.step`
returns ``residual=None`` and the loop splits the update from the input only where it reduces. The layer itself
is HF's own module, called with what tor_exp computes for the current tokens instead of what HF's model forward
would compute for the full sequence:

* the SSM mixers get the 2-D padding mask (padding states are zeroed by HF's mixers);
* attention gets a 4-D mask that lets each real token see the real tokens at or before it in the current
  (original) order, never padding — a padding query sees only itself, so no row is empty — in the format of
  ``config._attn_implementation`` (additive float for ``eager``, boolean otherwise);
* rotary embeddings are computed at each token's original position among its row's real tokens (a merged token
  keeps its destination's position), so RoPE attention after a reduction sees the original relative distances;
* while a cache is filled, padded rows are left-aligned around the layer (SSM states and conv windows of real
  tokens only; key/value slots in order), and which cached key slots are real is recorded per attention layer for
  the decode steps (:class:`tor_exp.models.adapter.DecodeState`).

A family subclass says where its modules are (:meth:`base`, :meth:`embed`, :meth:`final_norm`, :meth:`rotary`),
what each layer holds (:meth:`layer_parts`, :meth:`mamba_mixer`) and how its layer is called (:meth:`call_layer`).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager, Optional, Sequence

import torch
from torch import Tensor, nn

from tor_exp.errors import ConfigError
from tor_exp.models.adapter import LayerInput, ModelAdapter, StepOutput
from tor_exp.models.families.capture import capture_mamba2
from tor_exp.models.shape import Attention, Mamba2, ModelShape, Part
from tor_exp.models.tokens import gather_tokens, right_align_order

#: attention implementations the 4-D masks are built for (flash attention takes no 4-D mask)
MASKED_ATTENTION = ("sdpa", "eager")


@dataclass
class LayerCall:
    """What :meth:`HybridFamily.call_layer` passes to a HF decoder layer for the current tokens.

    ssm_mask [B, N] (1 = real token) or None without padding; attention_mask [B, 1, Q, K] or None for a layer
    without attention; position_ids [B, N] and position_embeddings (cos, sin) at the original positions (None
    when the family has no RoPE); streams: the tokens' other streams (Zamba2's embeddings).
    """

    ssm_mask: Optional[Tensor]
    attention_mask: Optional[Tensor]
    position_ids: Optional[Tensor]
    position_embeddings: Optional[tuple[Tensor, Tensor]]
    cache: Any
    streams: dict[str, Tensor] = field(default_factory=dict)


def mamba_tiny_keys(tiny: Any) -> dict[str, Any]:
    """The Mamba-2 mixer keys of a tiny ``model.tiny`` config in the ``mamba_*`` names that Bamba, Granite-4.0-H and
    Falcon-H1 share."""
    return dict(mamba_n_heads=tiny.d_model * tiny.expand // tiny.head_dim, mamba_d_head=tiny.head_dim,
                mamba_d_state=tiny.state_size, mamba_n_groups=tiny.n_groups, mamba_d_conv=tiny.conv_kernel,
                mamba_expand=tiny.expand, mamba_chunk_size=tiny.chunk_size)


def mamba2_part(config: Any) -> Mamba2:
    """The Mamba-2 mixer of a config in those ``mamba_*`` names."""
    heads, head_dim = int(config.mamba_n_heads), int(config.mamba_d_head)
    return Mamba2(d_inner=heads * head_dim, heads=heads, head_dim=head_dim, state_size=config.mamba_d_state,
                  n_groups=config.mamba_n_groups, conv_kernel=config.mamba_d_conv, chunk_size=config.mamba_chunk_size)


def attention_part(config: Any, **extra: Any) -> Attention:
    """The attention of a HF config (``num_attention_heads``, ``num_key_value_heads``, its head size)."""
    return Attention(heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                     head_dim=attention_head_dim(config), **extra)


def attention_head_dim(config: Any) -> int:
    """HF's attention head size: ``config.head_dim`` when the checkpoint gives one (Falcon-H1's need not equal
    hidden_size / num_attention_heads), else that quotient."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def allowed_keys(valid: Tensor, key_valid: Optional[Tensor] = None) -> Tensor:
    """[B, 1, Q, K] bool: query i may attend key j.

    Prefill (``key_valid`` None, Q = K = N): j ≤ i and j is a real token, or j = i (a padding query sees itself).
    Decode (``key_valid`` [B, K0] of the cached slots): every real cached slot, then the new tokens causally.
    """
    batch, q = valid.shape
    new = torch.ones(q, q, dtype=torch.bool, device=valid.device).tril()
    if key_valid is None:
        allowed = new[None] & valid[:, None, :]
        allowed = allowed | torch.eye(q, dtype=torch.bool, device=valid.device)[None]
        return allowed[:, None]
    cached = key_valid[:, None, :].expand(batch, q, key_valid.shape[1])
    return torch.cat([cached, new[None].expand(batch, q, q) & valid[:, None, :]], dim=2)[:, None]


def mask_format(allowed: Tensor, implementation: str, dtype: torch.dtype) -> Tensor:
    """A boolean attend-mask in the format HF's attention ``implementation`` expects."""
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return allowed


class HybridFamily(ModelAdapter):
    """A HF hybrid causal LM: ``model.model`` holds the embedding, ``layers`` and the final norm."""

    hybrid = True

    # ---------------------------------------------------------------------------- where the modules are
    def base(self, model: nn.Module) -> nn.Module:
        return model.model

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return self.base(model).layers

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        return self.base(model).embed_tokens(input_ids)

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return self.base(model).norm(hidden if residual is None else residual + hidden)

    def rotary(self, model: nn.Module) -> Optional[nn.Module]:
        """The rotary-embedding module (``forward(x, position_ids) -> (cos, sin)``), None without RoPE."""
        return getattr(self.base(model), "rotary_emb", None)

    # ---------------------------------------------------------------------------- what a layer holds
    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        """The parts of layer ``index`` (:mod:`tor_exp.models.shape`), in the order the layer computes them."""
        raise NotImplementedError

    def config_shape(self, config: Any) -> ModelShape:
        n_layer = int(config.num_hidden_layers)
        return ModelShape(config.hidden_size, n_layer, config.vocab_size,
                          tuple(self.layer_parts(config, i) for i in range(n_layer)))

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        """The layer's Mamba mixer (whose y ranks tokens), None for a layer without one."""
        raise NotImplementedError

    def capture_mixer(self, mixer: nn.Module, store: dict[str, Tensor]) -> ContextManager[None]:
        """Capture y of the family's Mamba mixer (Mamba-2 by default; Jamba's are Mamba-1)."""
        return capture_mamba2(mixer, store)

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> Optional[ContextManager[None]]:
        mixer = self.mamba_mixer(block)
        return None if mixer is None else self.capture_mixer(mixer, store)

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        """Run HF's decoder layer ``index`` on ``x`` [B, N, D]; returns its output stream [B, N, D]."""
        raise NotImplementedError

    def has_attention(self, model: nn.Module, index: int) -> bool:
        return any(isinstance(p, Attention) for p in self.layer_parts(model.config, index))

    # ---------------------------------------------------------------------------- one step
    def step(self, model: nn.Module, index: int, block: nn.Module, hidden: Tensor, residual: Optional[Tensor],
             inp: LayerInput) -> StepOutput:
        x = hidden if residual is None else residual + hidden
        seg = inp.segment  # what depends on the token state only: computed by the segment's first layer that needs it
        order = inverse = None
        if inp.cache is not None and not inp.decode and not inp.all_valid:
            if "aligned" not in seg:
                order = right_align_order(inp.valid)
                seg["aligned"] = (order, torch.argsort(order, dim=1), torch.gather(inp.valid, 1, order),
                                  torch.gather(inp.positions, 1, order),
                                  {name: gather_tokens(t, order) for name, t in inp.streams.items()})
            order, inverse, valid, positions, streams = seg["aligned"]
            x = gather_tokens(x, order)
        else:
            valid, positions, streams = inp.valid, inp.positions, inp.streams
        attention_mask = None
        if self.has_attention(model, index):
            attention_mask = self._attention_mask(model, index, valid, inp)
        position_embeddings = None
        rotary = self.rotary(model)
        if rotary is not None:
            key = ("rotary", id(rotary), x.dtype, x.device)  # HF's (cos, sin) follow x's dtype and device only
            if key not in seg:
                seg[key] = rotary(x, position_ids=positions)
            position_embeddings = seg[key]
        ssm_mask = None
        if not (inp.all_valid or inp.decode):
            if ("ssm_mask", x.dtype) not in seg:
                seg["ssm_mask", x.dtype] = valid.to(x.dtype)
            ssm_mask = seg["ssm_mask", x.dtype]
        call = LayerCall(ssm_mask=ssm_mask, attention_mask=attention_mask, position_ids=positions,
                         position_embeddings=position_embeddings, cache=inp.cache, streams=streams)
        store: dict[str, Tensor] = {}
        capture = self.capture_ranking(block, store) if inp.want_ssm else nullcontext()
        if capture is None:
            raise ConfigError(f"reduction.importance_source=ssm_out: layer {index} has no mixer whose output ranks "
                              "tokens")
        with capture:
            out = self.call_layer(model, index, block, x, call)
        features = {"block_input": x, **store}
        if order is not None:
            out = gather_tokens(out, inverse)
            features = {name: gather_tokens(t, inverse) for name, t in features.items()}
        return StepOutput(out, None, features)

    def _attention_mask(self, model: nn.Module, index: int, valid: Tensor, inp: LayerInput) -> Tensor:
        implementation = getattr(model.config, "_attn_implementation", None) or "eager"
        if implementation not in MASKED_ATTENTION:
            raise ConfigError(f"model attn_implementation={implementation!r}: tor_exp reduces tokens under "
                              f"{' or '.join(MASKED_ATTENTION)} attention (a per-row mask of the surviving tokens)")
        book = inp.bookkeeping
        if inp.decode:  # each layer's cached slots are its own: no mask to share
            allowed = allowed_keys(valid, book.key_valid[index])
            book.key_valid[index] = torch.cat([book.key_valid[index], valid], dim=1)
            return mask_format(allowed, implementation, next(model.parameters()).dtype)
        if book is not None and inp.cache is not None:
            book.key_valid[index] = valid
        key = ("attention_mask", implementation)  # a prefill's mask depends on the segment's tokens only
        if key not in inp.segment:
            inp.segment[key] = mask_format(allowed_keys(valid), implementation, next(model.parameters()).dtype)
        return inp.segment[key]
