"""Granite 4.0 hybrids (HF ``GraniteMoeHybridForCausalLM``, model_type ``granitemoehybrid``): every decoder layer is a
Mamba-2 mixer or attention, then a mixture of experts plus a shared SwiGLU MLP (the shared MLP alone when
``num_local_experts`` is 0, as in the dense granite-4.0-h-micro).

Checkpoints: ibm-granite/granite-4.0-h-micro (dense), ibm-granite/granite-4.0-h-tiny (MoE). The layer pattern is
``config.layer_types`` (``mamba`` / ``attention`` in hub configs, read by HF as ``linear_attention`` /
``full_attention``). The family's multipliers and where tor_exp applies them:

* ``embedding_multiplier``: the token embeddings are scaled before the first layer (:meth:`embed`);
* ``residual_multiplier``: inside HF's decoder layer (``x + update * m`` for both sublayers), so the loop's
  split of a layer's output into input and update at a reduction location sees the already scaled update;
* ``attention_multiplier``: HF's attention uses it as the softmax scale instead of ``head_dim ** -0.5``;
* ``logits_scaling``: the LM head's logits are divided by it (:meth:`logits`);
* ``position_embedding_type``: ``rope`` gives attention RoPE at the original positions; anything else (the hub's
  ``nope``) none, in which case HF's model holds no ``rotary_emb``.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.hybrid import HybridFamily, LayerCall, attention_part, mamba2_part, mamba_tiny_keys
from tor_exp.models.shape import MLP, MoE, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "granite_hybrid", "hybrid": True, "model_types": ("granitemoehybrid",)},)



class GraniteHybridFamily(HybridFamily):
    family = "granite_hybrid"

    def model_class(self) -> type:
        return GraniteMoeHybridForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(layer_types=["mamba"] * 3 + ["attention", "mamba", "attention"] + ["mamba"] * 2,
                    num_attention_heads=4, num_key_value_heads=2, intermediate_size=tiny.d_model,
                    shared_intermediate_size=2 * tiny.d_model, num_local_experts=4, num_experts_per_tok=2,
                    position_embedding_type="rope")
        keys.update(tiny.config)
        pattern = keys.get("layer_types")
        if pattern is not None and len(pattern) != tiny.n_layer:
            raise ConfigError(f"model.tiny.config.layer_types: {len(pattern)} layer types, "
                              f"model.tiny.n_layer={tiny.n_layer}")
        return GraniteMoeHybridConfig(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
                                      **mamba_tiny_keys(tiny), tie_word_embeddings=False, use_cache=True, **keys)

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        mixer = mamba2_part(config) if config.layers_block_type[index] == "linear_attention" else attention_part(config)
        # every SwiGLU: the shared MLP (an MLP part when there are no experts) and each expert
        if (config.num_local_experts or 0) > 0:
            return mixer, MoE(experts=config.num_local_experts, top_k=config.num_experts_per_tok or 0,
                              size=config.intermediate_size, shared_size=config.shared_intermediate_size, gated=True)
        return mixer, MLP(size=config.shared_intermediate_size, gated=True)

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        return self.given_embeddings(model, self.base(model).embed_tokens(input_ids))

    def given_embeddings(self, model: nn.Module, inputs_embeds: Tensor) -> Tensor:
        """HF scales embeddings by ``embedding_multiplier`` whether it looked them up or was given them."""
        return inputs_embeds * self.base(model).embedding_multiplier

    def logits(self, model: nn.Module, hidden: Tensor, as_float: bool = True) -> Tensor:
        """HF's ``lm_head(h) / logits_scaling``, divided in the model's dtype as HF does."""
        head = model.lm_head
        out = head(hidden.to(head.weight.dtype)) / model.config.logits_scaling
        return out.float() if as_float else out

    def mamba_mixer(self, block: nn.Module) -> nn.Module | None:
        return block.mamba  # None in an attention layer

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        # no position_ids: HF's layer has no such parameter and forwards extra keywords to the Mamba mixer's scan
        # and conv kernels too; attention only needs the rotary cos/sin
        mask = call.attention_mask if block.block_type == "full_attention" else call.ssm_mask
        return block(x, attention_mask=mask, cache=call.cache, use_cache=call.cache is not None,
                     position_embeddings=call.position_embeddings)


ADAPTERS = (GraniteHybridFamily(),)
