"""Qwen3.5, dense and MoE (HF ``qwen3_5`` / ``qwen3_5_moe``): the language model of the released
``Qwen3_5ForConditionalGeneration`` / ``Qwen3_5MoeForConditionalGeneration`` checkpoints, loaded for text-only use
as HF's ``Qwen3_5ForCausalLM`` / ``Qwen3_5MoeForCausalLM`` (which read the checkpoint's ``text_config`` and leave
the vision tower's weights unloaded).

Checkpoints: Qwen/Qwen3.5-9B (dense; 0.8B up to 27B), Qwen/Qwen3.5-35B-A3B (MoE; up to 397B-A17B). The text stack
is Qwen3-Next's (:mod:`tor_exp.models.families.qwen3_next`): Gated DeltaNet layers (q, k, v, z, b, a projected
apart instead of fused) and gated attention, then a SwiGLU MLP (dense) or experts with a gated shared expert
(MoE, every layer). Its attention takes three-component multimodal RoPE positions (time, height, width); for text
they are the same position three times, and HF's text rotary module builds them from one [B, N] position tensor,
so a kept token carries its original position in all three.
"""
from __future__ import annotations

from typing import Any

from transformers import (Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig,
                          Qwen3_5TextConfig)

from tor_exp.models.families.qwen3_next import Qwen3NextFamily

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = (
    {"name": "qwen3_5", "hybrid": True, "mixer_heads": True, "model_types": ("qwen3_5", "qwen3_5_text")},
    {"name": "qwen3_5_moe", "hybrid": True, "mixer_heads": True,
     "model_types": ("qwen3_5_moe", "qwen3_5_moe_text")},
)


class Qwen35Family(Qwen3NextFamily):
    family = "qwen3_5"

    def model_class(self) -> type:
        return Qwen3_5ForCausalLM

    def config_class(self) -> type:
        return Qwen3_5TextConfig

    def tiny_defaults(self, tiny: Any) -> dict[str, Any]:
        return dict(layer_types=["linear_attention"] * 3 + ["full_attention"], num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, intermediate_size=2 * tiny.d_model,
                    partial_rotary_factor=0.25)

    def text_config(self, config: Any) -> Any:
        """A multimodal checkpoint's config nests the language model's as ``text_config``."""
        return getattr(config, "text_config", None) or config


class Qwen35MoeFamily(Qwen35Family):
    family = "qwen3_5_moe"

    def model_class(self) -> type:
        return Qwen3_5MoeForCausalLM

    def config_class(self) -> type:
        return Qwen3_5MoeTextConfig

    def tiny_defaults(self, tiny: Any) -> dict[str, Any]:
        return dict(layer_types=["linear_attention"] * 3 + ["full_attention"], num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=tiny.d_model, shared_expert_intermediate_size=tiny.d_model,
                    partial_rotary_factor=0.25)


ADAPTERS = (Qwen35Family(), Qwen35MoeFamily())
