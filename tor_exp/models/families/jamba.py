"""Jamba (HF ``JambaForCausalLM``): each layer is a Mamba-1 mixer or attention (no positional embedding), then an
MLP or a mixture of experts.

Checkpoints: ai21labs/AI21-Jamba-Mini-1.6, ai21labs/Jamba-tiny-dev. A layer is ``x + mixer(norm(x))`` followed by
``x + ffn(norm(x))`` (HF ``JambaMambaDecoderLayer`` / ``JambaAttentionDecoderLayer``). Layer ``i`` is attention when
``i % attn_layer_period == attn_layer_offset`` and holds a MoE when ``i % expert_layer_period ==
expert_layer_offset`` (and ``num_experts > 1``); the config's ``layers_block_type`` / ``layers_num_experts`` say
so. The Mamba mixer RMS-normalises dt, B and C (with weights) and calls its module's ``mamba_selective_scan``
on every prefill (there is no fused path), so :mod:`tor_exp.compat.transformers_mixers` reads y there.
"""
from __future__ import annotations

from typing import Any, Optional

from huggingface_hub.errors import StrictDataclassError
from torch import Tensor, nn
from transformers import JambaConfig, JambaForCausalLM
from transformers.models.jamba.modeling_jamba import JambaAttentionDecoderLayer, JambaMambaDecoderLayer

from tor_exp.errors import ConfigError
from tor_exp.models.families.capture import capture_mamba1
from tor_exp.models.families.hybrid import HybridFamily, LayerCall
from tor_exp.models.shape import MLP, Attention, Mamba1, MoE, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "jamba", "hybrid": True, "mixer_heads": False, "model_types": ("jamba",)},)


class JambaFamily(HybridFamily):
    family = "jamba"

    def model_class(self) -> type:
        return JambaForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        """A tiny Jamba whose 8 layers hold every layer kind by default (attention at i % 3 == 2, MoE at odd i);
        ``model.tiny.config`` holds Jamba's own keys."""
        keys = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * tiny.d_model,
                    num_experts=4, num_experts_per_tok=2, attn_layer_period=3, attn_layer_offset=2,
                    expert_layer_period=2, expert_layer_offset=1)
        keys.update(tiny.config)
        try:
            return JambaConfig(
                **vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer, mamba_d_state=tiny.state_size,
                mamba_d_conv=tiny.conv_kernel, mamba_expand=tiny.expand, use_associative_scan=False,
                tie_word_embeddings=False, use_cache=True, **keys,
            )
        except (StrictDataclassError, TypeError, ValueError) as err:  # HF's checks (e.g. an offset >= its period)
            why = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
            raise ConfigError(f"model.tiny.config={dict(tiny.config)}: not a valid Jamba config ({why})") from None

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        heads = config.num_attention_heads
        if config.layers_block_type[index] == "mamba":
            mixer: Part = Mamba1(d_inner=int(config.mamba_expand) * config.hidden_size,
                                 state_size=config.mamba_d_state, conv_kernel=config.mamba_d_conv,
                                 dt_rank=int(config.mamba_dt_rank))
        else:
            mixer = Attention(heads=heads, kv_heads=config.num_key_value_heads,
                              head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads))
        if config.layers_num_experts[index] > 1:  # SwiGLU MLP and experts
            return mixer, MoE(experts=config.num_experts, top_k=config.num_experts_per_tok,
                              size=config.intermediate_size, shared_size=0, gated=True)
        return mixer, MLP(size=config.intermediate_size, gated=True)

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return model.model.final_layernorm(hidden if residual is None else residual + hidden)

    def rotary(self, model: nn.Module) -> Optional[nn.Module]:
        return None  # Jamba's attention has no positional embedding: the Mamba layers carry the order

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return block.mamba if isinstance(block, JambaMambaDecoderLayer) else None

    def capture_mixer(self, mixer: nn.Module, store: dict[str, Tensor]) -> Any:
        return capture_mamba1(mixer, store)  # Jamba's Mamba mixers are Mamba-1

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        if isinstance(block, JambaAttentionDecoderLayer):
            return block(x, attention_mask=call.attention_mask, position_ids=call.position_ids, cache=call.cache,
                         use_cache=call.cache is not None)
        return block(x, attention_mask=call.ssm_mask, cache=call.cache)


ADAPTERS = (JambaFamily(),)
