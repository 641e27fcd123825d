"""LFM2 (HF ``Lfm2ForCausalLM``, model_type ``lfm2``): every layer is a gated short convolution (``conv``) or
attention (``full_attention``), then a SwiGLU MLP.

Checkpoints: LiquidAI/LFM2-350M (and 700M, 1.2B, 2.6B). A layer is ``x + op(operator_norm(x))`` then
``h + feed_forward(ffn_norm(h))``; the model's final norm is named ``embedding_norm``. The short convolution
projects x to B, C and x' (``in_proj``), convolves B∘x' causally and depthwise over ``conv_L_cache`` taps and gates the
result with C before ``out_proj``:

* it takes no positions; HF zeroes a padding token's input with the 2-D padding mask, and without biases
  (``conv_bias: false``, as in every released checkpoint) B∘x' of a padding token is exactly zero, so padding never
  enters a conv window (while a cache is filled the hybrid step puts each row's padding first). With
  ``conv_bias: true`` it would, and such a config is refused with one line;
* its ranking signal is the gated conv output ``C·conv(B·x)`` before ``out_proj`` (a pre-hook on ``out_proj``);
* attention has q/k RMSNorm per head and RoPE at the original positions.

The MLP's hidden size is HF's: with ``block_auto_adjust_ff_dim`` it is 2/3 of ``intermediate_size``, times
``block_ffn_dim_multiplier``, rounded up to ``block_multiple_of``.
"""
from __future__ import annotations

from typing import Any, ContextManager, Optional

from torch import Tensor, nn
from transformers import Lfm2Config, Lfm2ForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.capture import capture_input
from tor_exp.models.families.hybrid import HybridFamily, LayerCall, attention_part
from tor_exp.models.shape import MLP, ModelShape, Part, ShortConv

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "lfm2", "hybrid": True, "mixer_heads": False, "model_types": ("lfm2",)},)


def lfm2_ffn_size(config: Any) -> int:
    """The hidden size of HF's ``Lfm2MLP`` for ``config``."""
    size = int(config.intermediate_size)
    if config.block_auto_adjust_ff_dim:
        size = int(2 * size / 3)
        if config.block_ffn_dim_multiplier is not None:
            size = int(config.block_ffn_dim_multiplier * size)
            multiple = int(config.block_multiple_of)
            size = multiple * ((size + multiple - 1) // multiple)
    return size


class Lfm2Family(HybridFamily):
    family = "lfm2"

    def model_class(self) -> type:
        return Lfm2ForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(layer_types=["conv", "conv", "full_attention", "conv"], num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=2 * tiny.d_model, block_auto_adjust_ff_dim=False,
                    conv_L_cache=tiny.conv_kernel)
        keys.update(tiny.config)
        pattern = keys.get("layer_types")
        if pattern is not None and len(pattern) != tiny.n_layer:
            raise ConfigError(f"model.tiny.config.layer_types: {len(pattern)} layer types, "
                              f"model.tiny.n_layer={tiny.n_layer}")
        return Lfm2Config(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
                          tie_word_embeddings=False, use_cache=True, **keys)

    def config_shape(self, config: Any) -> ModelShape:
        if config.conv_bias:
            raise ConfigError("model family lfm2: conv_bias=true puts a bias into the short convolution's input, so "
                              "padding would enter a conv window; tor_exp reduces LFM2 with conv_bias=false only "
                              "(every released checkpoint)")
        return super().config_shape(config)

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        if config.layer_types[index] == "conv":
            mixer: Part = ShortConv(width=config.hidden_size, kernel=config.conv_L_cache)
        else:
            mixer = attention_part(config)
        return mixer, MLP(size=lfm2_ffn_size(config), gated=True)

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return self.base(model).embedding_norm(hidden if residual is None else residual + hidden)

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return None if block.is_attention_layer else block.conv

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> Optional[ContextManager[None]]:
        return None if block.is_attention_layer else capture_input(block.conv.out_proj, store)

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        # the short conv forwards extra keywords to its conv function: give it only the padding mask
        if not block.is_attention_layer:
            return block(x, attention_mask=call.ssm_mask, cache=call.cache)
        return block(x, position_embeddings=call.position_embeddings, attention_mask=call.attention_mask,
                     position_ids=call.position_ids, cache=call.cache)


ADAPTERS = (Lfm2Family(),)
