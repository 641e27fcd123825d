"""LFM2 (HF ``Lfm2ForCausalLM``): every decoder layer is a gated short convolution or RoPE attention (with q/k
norms), then a SwiGLU MLP — no Mamba mixer anywhere.

Checkpoints: LiquidAI/LFM2-350M, LiquidAI/LFM2-700M, LiquidAI/LFM2-1.2B. A layer is
``h = x + operator(operator_norm(x))`` then ``h + feed_forward(ffn_norm(h))``; ``config.layer_types`` says which
operator (``conv`` or ``full_attention``). The short convolution projects to B, C, x, computes ``C ∘ conv(B ∘ x)``
with a causal depthwise conv of ``conv_L_cache`` taps and projects back with ``out_proj``: that gated conv output
is what a method ranks tokens on (``importance_source: ssm_out``, captured by a forward pre-hook on ``out_proj``);
an attention layer ranks by the nearest conv layer before it. HF zeroes padded inputs before ``in_proj``; with
``conv_bias`` its bias would still put ``B ∘ x`` ≠ 0 at padding into the windows of later real tokens, so here a
forward hook zeroes the projection at padding too: padding never enters a conv window. The final norm is HF's
``embedding_norm`` (applied after the last layer).
"""
from __future__ import annotations

from typing import Any, ContextManager, Optional

from torch import Tensor, nn
from transformers import Lfm2Config, Lfm2ForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.capture import capture_input
from tor_exp.models.families.hybrid import HybridFamily, LayerCall, attention_part
from tor_exp.models.shape import MLP, Part, ShortConv

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "lfm2", "hybrid": True, "mixer_heads": False, "model_types": ("lfm2",)},)

#: the tiny model's layers (conf/model/tiny_lfm2.yaml states them too)
_TINY_LAYERS = ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv"]


def feed_forward_size(config: Any) -> int:
    """The hidden size of HF's ``Lfm2MLP`` (``intermediate_size`` adjusted as HF adjusts it)."""
    size = config.intermediate_size
    if config.block_auto_adjust_ff_dim:
        size = int(2 * size / 3)
        if config.block_ffn_dim_multiplier is not None:
            size = int(config.block_ffn_dim_multiplier * size)
            size = config.block_multiple_of * ((size + config.block_multiple_of - 1) // config.block_multiple_of)
    return size


class Lfm2Family(HybridFamily):
    family = "lfm2"

    def model_class(self) -> type:
        return Lfm2ForCausalLM

    #: the ``layer_types`` a layer may have, and the tiny config's pattern
    layer_kinds: frozenset[str] = frozenset({"conv", "full_attention"})
    tiny_layers: tuple[str, ...] = tuple(_TINY_LAYERS)

    def config_class(self) -> type:
        return Lfm2Config

    def tiny_defaults(self, tiny: Any) -> dict[str, Any]:
        """The family's tiny-config keys before ``model.tiny.config`` overrides them."""
        return dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * tiny.d_model,
                    block_auto_adjust_ff_dim=False)

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(layer_types=list(self.tiny_layers), **self.tiny_defaults(tiny))
        keys.update(tiny.config)
        kinds = keys["layer_types"] = [str(kind) for kind in keys["layer_types"]]
        if len(kinds) != tiny.n_layer or set(kinds) - self.layer_kinds:
            raise ConfigError(f"model.tiny.config.layer_types={kinds}: one of {' or '.join(sorted(self.layer_kinds))} "
                              f"per layer, model.tiny.n_layer={tiny.n_layer} layers")
        return self.config_class()(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
                                   conv_L_cache=tiny.conv_kernel, tie_word_embeddings=False, use_cache=True, **keys)

    def feed_forward(self, config: Any, index: int) -> Part:
        """The part after layer ``index``'s operator."""
        return MLP(size=feed_forward_size(config), gated=True)

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        ffn = self.feed_forward(config, index)
        if config.layer_types[index] == "conv":
            return ShortConv(width=config.hidden_size, kernel=config.conv_L_cache), ffn
        return attention_part(config), ffn

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return self.base(model).embedding_norm(hidden if residual is None else residual + hidden)

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return None  # no Mamba mixer: the short convolution ranks (capture_ranking)

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> Optional[ContextManager[None]]:
        """``C ∘ conv(B ∘ x)`` ([B, N, D]) of a conv layer, what its ``out_proj`` receives."""
        return None if block.is_attention_layer else capture_input(block.conv.out_proj, store)

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        if block.is_attention_layer:
            return block(x, position_embeddings=call.position_embeddings, attention_mask=call.attention_mask,
                         position_ids=call.position_ids, cache=call.cache)
        if call.ssm_mask is None:
            return block(x, attention_mask=None, cache=call.cache)
        mask = call.ssm_mask[..., None]
        # B, C, x of padding are 0 (HF zeroes only in_proj's input, which leaves its bias)
        handle = block.conv.in_proj.register_forward_hook(lambda _m, _a, out: out * mask.to(out.dtype))
        try:
            return block(x, attention_mask=call.ssm_mask, cache=call.cache)
        finally:
            handle.remove()


ADAPTERS = (Lfm2Family(),)
