"""Nemotron-H (HF ``NemotronHForCausalLM``): one mixer per block — Mamba-2, attention (no RoPE), MLP or MoE.

Checkpoints: nvidia/Nemotron-H-8B-Base-8K, nvidia/NVIDIA-Nemotron-Nano-9B-v2. A block is ``x + mixer(norm(x))``;
the layer pattern is ``config.layers_block_type`` (``hybrid_override_pattern`` in older configs: M = Mamba-2,
* = attention, - = MLP, E = MoE).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn
from transformers import NemotronHConfig, NemotronHForCausalLM

from tor_exp.models.families.hybrid import HybridFamily, LayerCall
from tor_exp.models.shape import MLP, Attention, Mamba2, ModelShape, MoE, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "nemotron_h", "hybrid": True, "model_types": ("nemotron_h",)},)



class NemotronHFamily(HybridFamily):
    family = "nemotron_h"

    def model_class(self) -> type:
        return NemotronHForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(hybrid_override_pattern="M-M*M-M*", num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    intermediate_size=4 * tiny.d_model)
        keys.update(tiny.config)
        pattern = keys.get("hybrid_override_pattern")
        if pattern is not None and len(pattern) != tiny.n_layer:
            from tor_exp.errors import ConfigError

            raise ConfigError(f"model.tiny.config.hybrid_override_pattern={pattern!r}: {len(pattern)} blocks, "
                              f"model.tiny.n_layer={tiny.n_layer}")
        return NemotronHConfig(
            **vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
            mamba_num_heads=tiny.d_model * tiny.expand // tiny.head_dim, mamba_head_dim=tiny.head_dim,
            ssm_state_size=tiny.state_size, n_groups=tiny.n_groups, conv_kernel=tiny.conv_kernel,
            chunk_size=tiny.chunk_size, tie_word_embeddings=False, use_cache=True, **keys,
        )

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        kind = config.layers_block_type[index]
        if kind == "linear_attention":
            heads, head_dim = config.mamba_num_heads, config.mamba_head_dim
            return (Mamba2(d_inner=heads * head_dim, heads=heads, head_dim=head_dim, state_size=config.ssm_state_size,
                           n_groups=config.n_groups, conv_kernel=config.conv_kernel, chunk_size=config.chunk_size),)
        if kind == "full_attention":
            return (Attention(heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                              head_dim=config.head_dim),)
        if kind == "mlp":
            return (MLP(size=config.intermediate_size),)
        return (MoE(experts=config.n_routed_experts, top_k=config.num_experts_per_tok,
                    size=config.moe_intermediate_size,
                    shared_size=config.moe_shared_expert_intermediate_size * config.n_shared_experts),)

    def config_shape(self, config: Any) -> ModelShape:
        n_layer = len(config.layers_block_type)
        return ModelShape(config.hidden_size, n_layer, config.vocab_size,
                          tuple(self.layer_parts(config, i) for i in range(n_layer)))

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        return model.model.embeddings(input_ids)

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return model.model.norm_f(hidden if residual is None else residual + hidden)

    def rotary(self, model: nn.Module) -> Optional[nn.Module]:
        return None  # Nemotron-H's attention has no positional embedding

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return block.mixer if block.block_type == "linear_attention" else None

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        mask = call.attention_mask if block.block_type == "full_attention" else call.ssm_mask
        return block(x, cache=call.cache, attention_mask=mask, position_ids=call.position_ids,
                     use_cache=call.cache is not None)


ADAPTERS = (NemotronHFamily(),)
