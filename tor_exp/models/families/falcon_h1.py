"""Falcon-H1 (HF ``FalconH1ForCausalLM``): every decoder layer runs a Mamba-2 mixer and RoPE attention in parallel
on the same normed input, then a gated MLP.

Checkpoints: tiiuae/Falcon-H1-0.5B-Base, tiiuae/Falcon-H1-1.5B-Base. A layer is
``x + ssm_out_multiplier·mamba(n) + attention_out_multiplier·attention(attention_in_multiplier·n)`` with
``n = input_layernorm(x)``, then ``+ mlp(pre_ff_layernorm(·))``. The µP multipliers inside HF's modules
(``key_multiplier``, ``ssm_in_multiplier``, ``ssm_multipliers``, ``mlp_multipliers``) come with HF's layers; the two
outside them are applied here: ``embedding_multiplier`` on the embeddings and ``lm_head_multiplier`` on the logits.
Every layer holds a Mamba mixer, so each location ranks tokens by its own layer's y. The mixer ends with a gated
RMSNorm ``norm(y, gate)`` when ``mamba_rms_norm`` is true, else with ``y·silu(gate)`` right after the scan (its
``norm`` is an ``nn.Identity``); :func:`~tor_exp.models.families.capture.capture_mamba2` captures y before the gate
either way.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn
from transformers import FalconH1Config, FalconH1ForCausalLM

from tor_exp.models.families.hybrid import HybridFamily, LayerCall, attention_part, mamba2_part, mamba_tiny_keys
from tor_exp.models.shape import MLP, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "falcon_h1", "hybrid": True, "model_types": ("falcon_h1",)},)



class FalconH1Family(HybridFamily):
    family = "falcon_h1"

    def model_class(self) -> type:
        return FalconH1ForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=4 * tiny.d_model)
        keys.update(tiny.config)
        return FalconH1Config(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
                              mamba_d_ssm=tiny.d_model * tiny.expand, **mamba_tiny_keys(tiny),
                              tie_word_embeddings=False, use_cache=True, **keys)

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        # every Falcon-H1 layer: a Mamba-2 mixer and attention in parallel, then a gated MLP
        return mamba2_part(config), attention_part(config), MLP(size=config.intermediate_size, gated=True)

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        base = self.base(model)
        return base.embed_tokens(input_ids) * base.embedding_multiplier

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return self.base(model).final_layernorm(hidden if residual is None else residual + hidden)

    def logits(self, model: nn.Module, hidden: Tensor, as_float: bool = True) -> Tensor:
        head = model.lm_head
        out = head(hidden.to(head.weight.dtype)) * self.base(model).lm_head_multiplier
        return out.float() if as_float else out

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return block.mamba

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        # the attention gets the 4-D mask of the surviving tokens, the Mamba mixer the 2-D padding mask
        out = block(x, attention_mask=call.attention_mask, mamba_attention_mask=call.ssm_mask,
                    position_ids=call.position_ids, cache=call.cache, use_cache=call.cache is not None,
                    position_embeddings=call.position_embeddings)
        return out[0]


ADAPTERS = (FalconH1Family(),)
