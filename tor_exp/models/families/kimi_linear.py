"""Kimi-Linear (HF ``KimiLinearForCausalLM``, model_type ``kimi_linear``): every decoder layer is a KDA (Kimi Delta
Attention, ``linear_attention``) or a multi-head latent attention without positional embedding
(``full_attention``), then a SwiGLU MLP (``mlp_layer_types`` ``dense``) or a mixture of experts with a shared expert
(``sparse``).

Checkpoint: moonshotai/Kimi-Linear-48B-A3B-Instruct. A layer is ``h = x + mixer(input_layernorm(x))`` then
``h + mlp(post_attention_layernorm(h))``.

How tor_exp calls HF's layer on a reduced, padded token sequence (METHOD.md §7 and §8):

* KDA is a Gated DeltaNet whose decay is per key channel (``DeltaRule(channel_gate=True)``): q, k, v are projected
  apart (no bias), convolved by a causal depthwise conv (no bias) and l2-normalised; β = sigmoid(b_proj(x)); the
  decay and the output gate come through rank-``head_dim`` bottlenecks. HF zeroes a padding token's input first,
  so a left-padding token's q, k, v are exact zeros: it writes nothing into the state (k = 0) and its decay only
  multiplies a state that is still zero; the hybrid step puts padding first while a cache is filled. The layer
  forwards extra keywords to its conv and scan functions, so it gets only the 2-D mask and the cache;
* the latent attention (MLA) has no RoPE at all (HF builds no rotary module): it gets the 4-D mask of the surviving
  tokens; its cache holds the compressed latents, one "head" wide;
* the ranking signal (``importance_source: ssm_out``) is the KDA output before its gated RMSNorm ``o_norm`` and
  ``o_proj``, [B, N, heads·head_dim] (:func:`~tor_exp.models.families.qwen3_next.capture_delta_rule`);
* routing (sigmoid scores plus a correction bias, group-limited top-k) is per token.

HF's torch KDA works in chunks of 64 (``chunk_kimi_delta_attention``'s default), so ``backbone_padded`` and
``reduction.chunk_align`` apply.
"""
from __future__ import annotations

from typing import Any, ContextManager, Optional

from torch import Tensor, nn
from transformers import KimiLinearConfig, KimiLinearForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.hybrid import HybridFamily, LayerCall
from tor_exp.models.families.qwen3_next import GDN_CHUNK, capture_delta_rule
from tor_exp.models.shape import MLP, DeltaRule, LatentAttention, MoE, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "kimi_linear", "hybrid": True, "mixer_heads": True, "model_types": ("kimi_linear",)},)

#: the tiny model's layers (conf/model/tiny_kimi_linear.yaml states them too)
_TINY_LAYERS = ["linear_attention", "linear_attention", "full_attention", "linear_attention", "linear_attention"]


def kda_part(config: Any) -> DeltaRule:
    """KDA: ``linear_num_heads`` heads of ``linear_head_dim`` for q, k and v, rank-``linear_head_dim`` gates."""
    heads, dim = config.linear_num_heads, config.linear_head_dim
    return DeltaRule(key_heads=heads, value_heads=heads, key_head_dim=dim, value_head_dim=dim,
                     conv_kernel=config.linear_conv_kernel_dim, chunk_size=GDN_CHUNK, channel_gate=True,
                     gate_rank=dim)


def latent_attention_part(config: Any) -> LatentAttention:
    """MLA in DeepSeek's config names (query/key head = nope + rope features)."""
    heads = config.num_attention_heads
    return LatentAttention(heads=heads, kv_heads=heads, head_dim=config.qk_nope_head_dim + config.qk_rope_head_dim,
                           kv_rank=config.kv_lora_rank, rope_dim=config.qk_rope_head_dim,
                           value_dim=config.v_head_dim, q_rank=config.q_lora_rank or 0)


class KimiLinearFamily(HybridFamily):
    family = "kimi_linear"

    def model_class(self) -> type:
        return KimiLinearForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        heads = tiny.d_model * tiny.expand // tiny.head_dim
        keys = dict(layer_types=_TINY_LAYERS, mlp_layer_types=["dense"] + ["sparse"] * (len(_TINY_LAYERS) - 1),
                    linear_num_heads=heads, linear_head_dim=tiny.head_dim, linear_conv_kernel_dim=tiny.conv_kernel,
                    num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None,
                    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, intermediate_size=2 * tiny.d_model,
                    moe_intermediate_size=tiny.d_model // 2, num_local_experts=4, num_experts_per_tok=2,
                    n_shared_experts=1, n_group=1, topk_group=1)
        keys.update(tiny.config)
        for key in ("layer_types", "mlp_layer_types"):
            keys[key] = [str(kind) for kind in keys[key]]
            if len(keys[key]) != tiny.n_layer:
                raise ConfigError(f"model.tiny.config.{key}: {len(keys[key])} layer types, "
                                  f"model.tiny.n_layer={tiny.n_layer}")
        return KimiLinearConfig(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
                                tie_word_embeddings=False, use_cache=True, **keys)

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        linear = config.layer_types[index] == "linear_attention"
        mixer: Part = kda_part(config) if linear else latent_attention_part(config)
        if config.mlp_layer_types[index] == "sparse":
            ffn: Part = MoE(experts=config.num_local_experts, top_k=config.num_experts_per_tok,
                            size=config.moe_intermediate_size,
                            shared_size=config.moe_intermediate_size * config.n_shared_experts, gated=True)
        else:
            ffn = MLP(size=config.intermediate_size, gated=True)
        return mixer, ffn

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return block.self_attn if block.block_type == "linear_attention" else None

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> Optional[ContextManager[None]]:
        mixer = self.mamba_mixer(block)
        return None if mixer is None else capture_delta_rule(mixer, store, norm=mixer.o_norm)

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        if x.shape[1] == 0:
            # every token of the batch removed (a threshold method may do that to a lone row): the layer's output
            # is empty too, and HF's KDA conv refuses an empty sequence
            return x
        if block.block_type == "linear_attention":
            return block(x, attention_mask=call.ssm_mask, cache=call.cache)
        return block(x, attention_mask=call.attention_mask, position_ids=call.position_ids, cache=call.cache,
                     use_cache=call.cache is not None)


ADAPTERS = (KimiLinearFamily(),)
