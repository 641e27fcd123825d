"""LFM3 (HF ``Lfm3ForCausalLM``, model_type ``lfm3``): LFM2's gated short convolutions, with two attention kinds —
full causal attention and sliding-window attention — and "sandwich" norms on each sublayer's output.

Checkpoint (named in HF's own docs; not checked against the hub here): LiquidAI/LFM3-1.7B. A layer is
``h = x + post_operator_norm(operator(operator_norm(x)))`` then ``h + post_ffn_norm(feed_forward(ffn_norm(h)))``;
``config.layer_types`` says which operator (``conv``, ``sliding_attention``, ``full_attention``). The conv is LFM2's
(ranking signal ``C ∘ conv(B ∘ x)`` before ``out_proj``; padding kept out of its window as in
:mod:`tor_exp.models.families.lfm2`). Attention is Qwen3's with q/k norms and a sigmoid gate per head
(``g_proj``: d_model → heads); RoPE differs per attention kind (``rotary_emb(..., layer_type=)``), so each layer
gets its own kind's cos/sin at the tokens' original positions.

**The window rule after a reduction** (docs/families.md, METHOD.md §8): a sliding layer lets a query at original
position p see exactly the surviving keys at original positions q with p − window < q ≤ p — the survivors of its
original window of *positions*, never ``window`` survivors counted by index (which would reach further back than
the model was trained to look). The 4-D mask is built from the positions; decode steps keep each cached slot's
position. HF's sliding cache layer keeps the last ``window − 1`` slots by index; since a row's survivors are in
position order, those slots hold every survivor inside the next token's window (at most window − 1 positions before
it), so HF's own cache is kept and the bookkeeping follows the slots it holds. FLOPs: the scores of a sliding layer are counted dense (``Attention.window`` recorded), as the masked sdpa /
eager kernels compute them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor, nn
from transformers import Lfm3Config, Lfm3ForCausalLM

from tor_exp.models.families.hybrid import LayerCall, attention_head_dim
from tor_exp.models.families.lfm2 import Lfm2Family
from tor_exp.models.shape import MLP, Attention, Part, ShortConv, register_part
from tor_exp.models.tokens import right_align_order

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "lfm3", "hybrid": True, "mixer_heads": False, "model_types": ("lfm3",)},)

#: the tiny model's layers (HF's default pattern for 8 layers; conf/model/tiny_lfm3.yaml states them too)
_TINY_LAYERS = ["conv", "conv", "full_attention", "conv", "sliding_attention", "conv", "full_attention", "conv"]
_KINDS = {"conv", "full_attention", "sliding_attention"}


@register_part
@dataclass(frozen=True)
class HeadGatedAttention(Attention):
    """LFM3's attention: :class:`Attention` plus a sigmoid gate per head from the layer input (``g_proj``,
    d_model → heads: ``attn_gate_proj``, counted by FlopCounterMode) and the gate's sigmoid and product
    (``attn_gate``)."""

    kind: ClassVar[str] = "head_gated_attention"

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        terms = super().terms(d_model, seq_len, reference)
        n, w = float(seq_len), self.width or d_model
        terms["attn_gate_proj"] = 2.0 * n * w * self.heads
        terms["attn_gate"] = 4.0 * n * self.heads + n * self.heads * self.head_dim  # sigmoid, then scale each head
        return terms


@register_part
@dataclass(frozen=True)
class SandwichNorms(Part):
    """The two RMSNorms on a layer's operator and feed-forward outputs (LFM3's ``use_sandwich_norm``)."""

    kind: ClassVar[str] = "sandwich_norms"

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        return {"sandwich_norms": 2 * 4.0 * float(seq_len) * d_model}


def window_keys(q_positions: Tensor, k_positions: Tensor, window: int) -> Tensor:
    """[B, 1, Q, K] bool: key at original position k lies in the query's original window (p − window < k ≤ p; the
    causal part is :func:`allowed_keys`' job; this only bounds how far back)."""
    return ((q_positions[:, :, None] - k_positions[:, None, :]) < window)[:, None]


def cached_slots(cache: Any, index: int) -> int:
    """How many key/value slots layer ``index`` of a HF cache holds now (a sliding layer: at most window − 1)."""
    keys = getattr(cache.layers[index], "keys", None)
    return 0 if keys is None or keys.numel() == 0 and keys.dim() < 3 else int(keys.shape[-2])


class Lfm3Family(Lfm2Family):
    family = "lfm3"

    def model_class(self) -> type:
        return Lfm3ForCausalLM

    layer_kinds = frozenset(_KINDS)
    tiny_layers = tuple(_TINY_LAYERS)

    def config_class(self) -> type:
        return Lfm3Config

    def tiny_defaults(self, tiny: Any) -> dict[str, Any]:
        return dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=2 * tiny.d_model,
                    sliding_window=8)

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        kind = config.layer_types[index]
        if kind == "conv":
            operator: Part = ShortConv(width=config.hidden_size, kernel=config.conv_L_cache)
        else:
            window = config.sliding_window if kind == "sliding_attention" else None
            cls = HeadGatedAttention if config.use_attention_gate else Attention
            operator = cls(heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                           head_dim=attention_head_dim(config), window=window)
        parts = (operator, MLP(size=config.intermediate_size, gated=True))
        return parts + (SandwichNorms(),) if config.use_sandwich_norm else parts

    def rotary(self, model: nn.Module) -> Optional[Callable[..., dict[str, tuple[Tensor, Tensor]]]]:
        """cos/sin per attention kind (full and sliding layers use different RoPE)."""
        emb = self.base(model).rotary_emb
        return lambda x, position_ids: {kind: emb(x, position_ids=position_ids, layer_type=kind)
                                        for kind in emb.layer_types}

    def _attention_mask(self, model: nn.Module, index: int, valid: Tensor, inp: Any) -> Tensor:
        """The hybrid mask, restricted for a sliding layer to the keys in the query's original window of positions
        (decode: the positions of the cached slots are kept beside ``key_valid``)."""
        window = getattr(model.config, "sliding_window", None)
        if model.config.layer_types[index] != "sliding_attention" or window is None:
            return super()._attention_mask(model, index, valid, inp)
        book, positions = inp.bookkeeping, inp.positions
        if inp.cache is not None and not inp.decode and not inp.all_valid:
            # the hybrid step moved each row's padding first (``valid`` is in that order): so are the positions
            positions = torch.gather(positions, 1, right_align_order(inp.valid))
        if inp.decode:
            # HF's sliding cache layer holds only its last window − 1 slots (by index), which hold every survivor
            # inside the next query's window of positions: keep the bookkeeping of those slots only
            held = cached_slots(inp.cache, index)
            book.key_valid[index] = book.key_valid[index][:, book.key_valid[index].shape[1] - held:]
            book.key_positions[index] = book.key_positions[index][:, book.key_positions[index].shape[1] - held:]
        mask = super()._attention_mask(model, index, valid, inp)
        if inp.decode:
            keys = torch.cat([book.key_positions[index], positions], dim=1)
            book.key_positions[index] = keys
        else:
            keys = positions
            if book is not None and inp.cache is not None:
                book.key_positions[index] = positions
        inside = window_keys(positions, keys, int(window))  # a query's own key (distance 0) is always inside
        if mask.dtype == torch.bool:
            return mask & inside
        return mask.masked_fill(~inside, torch.finfo(mask.dtype).min)

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        if block.is_attention_layer:
            kind = model.config.layer_types[index]
            rope = call.position_embeddings[kind] if call.position_embeddings is not None else None
            return block(x, position_embeddings=rope, attention_mask=call.attention_mask,
                         position_ids=call.position_ids, cache=call.cache)
        return super().call_layer(model, index, block, x, call)


ADAPTERS = (Lfm3Family(),)
