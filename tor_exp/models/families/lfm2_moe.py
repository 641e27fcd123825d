"""LFM2-MoE (HF ``Lfm2MoeForCausalLM``, model_type ``lfm2_moe``): LFM2's layers (a gated short convolution or RoPE
attention with q/k norms, see :mod:`tor_exp.models.families.lfm2`) with a mixture of experts instead of the SwiGLU
MLP after the first ``num_dense_layers`` layers.

Checkpoint: LiquidAI/LFM2-8B-A1B. The router is a d_model → ``num_experts`` projection with a sigmoid score (plus
a load-balancing ``expert_bias`` used only to pick the ``num_experts_per_tok`` experts); the chosen scores are
renormalised and scaled; each expert is a SwiGLU of ``moe_intermediate_size``; there is no shared expert. Routing
is per token, so a token's expert output never depends on the other tokens of its row or batch: token reduction
needs nothing beyond LFM2's own handling (padding kept out of the conv windows, RoPE at the original positions).
The dense layers' MLP has ``intermediate_size`` hidden units as configured (no LFM2 ``block_auto_adjust_ff_dim``).
HF names the rotary module ``pos_emb`` here.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn
from transformers import Lfm2MoeConfig, Lfm2MoeForCausalLM

from tor_exp.models.families.lfm2 import Lfm2Family
from tor_exp.models.shape import MLP, MoE, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "lfm2_moe", "hybrid": True, "mixer_heads": False, "model_types": ("lfm2_moe",)},)

#: the tiny model's layers (conf/model/tiny_lfm2_moe.yaml states them too)
_TINY_LAYERS = ["conv", "conv", "full_attention", "conv", "conv", "full_attention"]


class Lfm2MoeFamily(Lfm2Family):
    family = "lfm2_moe"

    def model_class(self) -> type:
        return Lfm2MoeForCausalLM

    tiny_layers = tuple(_TINY_LAYERS)

    def config_class(self) -> type:
        return Lfm2MoeConfig

    def tiny_defaults(self, tiny: Any) -> dict[str, Any]:
        return dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * tiny.d_model,
                    moe_intermediate_size=tiny.d_model, num_experts=4, num_experts_per_tok=2, num_dense_layers=1)

    def feed_forward(self, config: Any, index: int) -> Part:
        if index < config.num_dense_layers:
            return MLP(size=config.intermediate_size, gated=True)
        return MoE(experts=config.num_experts, top_k=config.num_experts_per_tok, size=config.moe_intermediate_size,
                   gated=True)

    def rotary(self, model: nn.Module) -> Optional[nn.Module]:
        return self.base(model).pos_emb


ADAPTERS = (Lfm2MoeFamily(),)
