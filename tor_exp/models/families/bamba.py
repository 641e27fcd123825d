"""Bamba (HF ``BambaForCausalLM``): every decoder layer is a Mamba-2 mixer or attention, then a SwiGLU MLP.

Checkpoints: ibm-ai-platform/Bamba-9B-v2 (and its v1, ibm-ai-platform/Bamba-9B). A layer is
``h = x + mixer(input_layernorm(x))`` then ``h + feed_forward(pre_ff_layernorm(h))``; the attention layers are
``config.attn_layer_indices`` (``config.layers_block_type``: ``linear_attention`` = Mamba-2, ``full_attention``).
Attention uses partial RoPE: HF's ``BambaConfig`` hard-codes ``partial_rotary_factor`` 0.5, so
``BambaRotaryEmbedding`` returns cos/sin for half of each head's dimensions and the other half passes unrotated;
tor_exp hands that module the original positions, nothing else changes. HF's decoder layer returns a pair
``(hidden, attention weights)``; only the hidden stream goes on.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn
from transformers import BambaConfig, BambaForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.hybrid import HybridFamily, LayerCall, attention_part, mamba2_part, mamba_tiny_keys
from tor_exp.models.shape import MLP, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "bamba", "hybrid": True, "model_types": ("bamba",)},)



class BambaFamily(HybridFamily):
    family = "bamba"

    def model_class(self) -> type:
        return BambaForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(attn_layer_indices=[3, 5], num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=4 * tiny.d_model)
        keys.update(tiny.config)
        attention = list(keys.get("attn_layer_indices") or [])
        outside = [i for i in attention if not (isinstance(i, int) and 0 <= i < tiny.n_layer)]
        if outside:
            raise ConfigError(f"model.tiny.config.attn_layer_indices={attention}: {outside} not layers of a "
                              f"model.tiny.n_layer={tiny.n_layer} model")
        return BambaConfig(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer, **mamba_tiny_keys(tiny),
                           tie_word_embeddings=False, use_cache=True, **keys)

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        # a Mamba-2 mixer (linear_attention) or attention (full_attention), then the SwiGLU MLP
        mixer = mamba2_part(config) if config.layers_block_type[index] == "linear_attention" else attention_part(config)
        return mixer, MLP(size=config.intermediate_size, gated=True)

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return self.base(model).final_layernorm(hidden if residual is None else residual + hidden)

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return block.mamba if block.block_type == "linear_attention" else None

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        mask = call.attention_mask if block.block_type == "full_attention" else call.ssm_mask
        out, _ = block(x, attention_mask=mask, position_ids=call.position_ids, cache=call.cache,
                       use_cache=call.cache is not None, position_embeddings=call.position_embeddings)
        return out


ADAPTERS = (BambaFamily(),)
