"""OLMo-Hybrid (HF ``OlmoHybridForCausalLM``, model_type ``olmo_hybrid``): Gated DeltaNet layers and attention
layers, each with a SwiGLU MLP.

Checkpoint: allenai/Olmo-Hybrid-7B. The pattern is ``config.layer_types``. The two layer kinds are HF classes of
their own with different norms:

* a Gated DeltaNet layer is pre-norm (``x + gdn(input_layernorm(x))``, then ``h + mlp(post_attention_layernorm(h))``);
  its mixer projects q, k, v, a, b and the output gate g apart, may scale β by 2 (``linear_allow_neg_eigval``) and
  ends with the gated RMSNorm ``o_norm(output, g)`` and ``o_proj``. The ranking signal is the delta-rule output
  before ``o_norm`` (:func:`~tor_exp.models.families.qwen3_next.capture_delta_rule`);
* an attention layer is post-norm (OLMo-2/3 style: ``x + post_attention_layernorm(attn(x))``, then
  ``h + post_feedforward_layernorm(mlp(h))``), with q/k RMSNorm over all heads and RoPE when the config gives
  ``rope_parameters.rope_theta`` — the released checkpoint has none (NoPE), and HF's model then holds no
  ``rotary_emb``; tor_exp passes no position embeddings then.

Padding is kept out of the conv window and the delta-rule state as in Qwen3-Next (HF zeroes a padding token's
input with the 2-D mask; nothing before the recurrence has a bias), and HF's scan works in chunks of 64.
"""
from __future__ import annotations

from typing import Any, ContextManager, Optional

from torch import Tensor, nn
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.hybrid import HybridFamily, LayerCall, attention_part
from tor_exp.models.families.qwen3_next import capture_delta_rule, delta_rule_part, gdn_tiny_keys
from tor_exp.models.shape import MLP, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "olmo_hybrid", "hybrid": True, "mixer_heads": True, "model_types": ("olmo_hybrid",)},)


class OlmoHybridFamily(HybridFamily):
    family = "olmo_hybrid"

    def model_class(self) -> type:
        return OlmoHybridForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(layer_types=["linear_attention"] * 3 + ["full_attention"], num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=2 * tiny.d_model, **gdn_tiny_keys(tiny))
        keys.update(tiny.config)
        pattern = keys.get("layer_types")
        if pattern is not None and len(pattern) != tiny.n_layer:
            raise ConfigError(f"model.tiny.config.layer_types: {len(pattern)} layer types, "
                              f"model.tiny.n_layer={tiny.n_layer}")
        return OlmoHybridConfig(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
                                tie_word_embeddings=False, use_cache=True, **keys)

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        linear = config.layer_types[index] == "linear_attention"
        mixer = delta_rule_part(config) if linear else attention_part(config)
        return mixer, MLP(size=config.intermediate_size, gated=True)

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return getattr(block, "linear_attn", None)

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> Optional[ContextManager[None]]:
        mixer = self.mamba_mixer(block)
        return None if mixer is None else capture_delta_rule(mixer, store, norm=mixer.o_norm)

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        # the Gated DeltaNet forwards extra keywords to its conv and scan functions: give it only the padding mask
        if hasattr(block, "linear_attn"):
            return block(x, attention_mask=call.ssm_mask, cache=call.cache)
        return block(x, attention_mask=call.attention_mask, position_ids=call.position_ids, cache=call.cache,
                     position_embeddings=call.position_embeddings)


ADAPTERS = (OlmoHybridFamily(),)
