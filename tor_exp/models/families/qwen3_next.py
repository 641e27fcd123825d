"""Qwen3-Next (HF ``Qwen3NextForCausalLM``, model_type ``qwen3_next``): every decoder layer is a Gated DeltaNet
(``linear_attention``) or a gated attention (``full_attention``), then a mixture of experts with a gated shared
expert (or a SwiGLU MLP on ``mlp_only_layers`` / without experts).

Checkpoints: Qwen/Qwen3-Next-80B-A3B-Instruct, Qwen/Qwen3-Next-80B-A3B-Thinking. A layer is
``h = x + mixer(input_layernorm(x))`` then ``h + mlp(post_attention_layernorm(h))``; the pattern is
``config.layer_types`` (three Gated DeltaNet layers, then one attention layer, in the released checkpoints).

How tor_exp calls HF's layer on a reduced, padded token sequence (METHOD.md §7 and §8):

* the Gated DeltaNet takes no positions; it gets the 2-D padding mask, with which HF zeroes a padding token's
  input before ``in_proj``. With no bias anywhere before the recurrence, a padding token's q, k, v leave the causal
  conv as exact zeros and write nothing into the delta-rule state (k = 0), so padding reaches neither a conv
  window nor the state. While a cache is filled, the hybrid step puts each row's padding first (left), so the
  conv window and the state handed to decoding hold real tokens only;
* attention (q/k RMSNorm, partial RoPE over ``partial_rotary_factor`` of each head, a sigmoid output gate from
  ``q_proj``) gets the 4-D mask of the surviving tokens and RoPE at their original positions;
* the ranking signal (``importance_source: ssm_out``) is the delta-rule output before the gated RMSNorm and
  ``out_proj``, [B, N, value_heads·value_head_dim] (:func:`capture_delta_rule`), the counterpart of Mamba-2's y
  before its gated norm.

HF's torch path of the delta rule works in chunks of 64 (``torch_chunk_gated_delta_rule``'s default, not a config
key): the :class:`~tor_exp.models.shape.DeltaRule` part says so, so ``backbone_padded`` and
``reduction.chunk_align`` apply as for Mamba-2.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ContextManager, Iterator, Optional

from torch import Tensor, nn
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.hybrid import HybridFamily, LayerCall, attention_part
from tor_exp.models.shape import MLP, DeltaRule, ModelShape, MoE, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "qwen3_next", "hybrid": True, "mixer_heads": True, "model_types": ("qwen3_next",)},)

#: the chunk HF's torch Gated DeltaNet scan works in (``torch_chunk_gated_delta_rule``'s default)
GDN_CHUNK = 64


@contextmanager
def capture_delta_rule(mixer: nn.Module, store: dict[str, Tensor], norm: Optional[nn.Module] = None
                       ) -> Iterator[None]:
    """Put the delta-rule output of ``mixer``'s next forward, before its gated norm ``norm(core_attn_out, z)``
    (``mixer.norm`` unless given: OLMo-Hybrid's is ``o_norm``) and ``out_proj``, into ``store["ssm_out"]`` as
    [B, N, value_heads·value_head_dim].

    HF flattens the output to [B·N·heads, head_dim] before the norm, so a pre-hook on the mixer records B and N."""
    size: dict[str, tuple[int, int]] = {}

    def on_mixer(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        size["bn"] = tuple(hidden.shape[:2])

    def on_norm(_module: nn.Module, args: tuple) -> None:
        batch, length = size["bn"]
        store["ssm_out"] = args[0].reshape(batch, length, -1)

    handles = [mixer.register_forward_pre_hook(on_mixer, with_kwargs=True),
               (mixer.norm if norm is None else norm).register_forward_pre_hook(on_norm)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def delta_rule_part(config: Any) -> DeltaRule:
    """The Gated DeltaNet of a config in Qwen3-Next's ``linear_*`` names."""
    return DeltaRule(key_heads=config.linear_num_key_heads, value_heads=config.linear_num_value_heads,
                     key_head_dim=config.linear_key_head_dim, value_head_dim=config.linear_value_head_dim,
                     conv_kernel=config.linear_conv_kernel_dim, chunk_size=GDN_CHUNK)


def gdn_tiny_keys(tiny: Any) -> dict[str, Any]:
    """A tiny config's Gated DeltaNet in the ``linear_*`` names: value heads of ``head_dim`` splitting
    d_model·expand (as a Mamba-2 mixer's heads), half as many key heads (grouped values, as in the checkpoints)."""
    value_heads = tiny.d_model * tiny.expand // tiny.head_dim
    return dict(linear_num_value_heads=value_heads, linear_num_key_heads=max(1, value_heads // 2),
                linear_key_head_dim=tiny.head_dim, linear_value_head_dim=tiny.head_dim,
                linear_conv_kernel_dim=tiny.conv_kernel)


class Qwen3NextFamily(HybridFamily):
    family = "qwen3_next"

    def model_class(self) -> type:
        return Qwen3NextForCausalLM

    def config_class(self) -> type:
        return Qwen3NextConfig

    def tiny_defaults(self, tiny: Any) -> dict[str, Any]:
        """The family's tiny-config keys before ``model.tiny.config`` overrides them."""
        return dict(layer_types=["linear_attention"] * 3 + ["full_attention"], num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, intermediate_size=2 * tiny.d_model,
                    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=tiny.d_model,
                    shared_expert_intermediate_size=tiny.d_model, partial_rotary_factor=0.25)

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = {**self.tiny_defaults(tiny), **gdn_tiny_keys(tiny)}
        keys.update(tiny.config)
        pattern = keys.get("layer_types")
        if pattern is not None and len(pattern) != tiny.n_layer:
            raise ConfigError(f"model.tiny.config.layer_types: {len(pattern)} layer types, "
                              f"model.tiny.n_layer={tiny.n_layer}")
        return self.config_class()(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
                                   tie_word_embeddings=False, use_cache=True, **keys)

    # ---------------------------------------------------------------------------- what a layer holds
    def text_config(self, config: Any) -> Any:
        """The config of the language model (itself here; Qwen3.5's multimodal config nests it)."""
        return config

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        config = self.text_config(config)
        if config.layer_types[index] == "linear_attention":
            mixer: Part = delta_rule_part(config)
        else:
            mixer = attention_part(config, output_gate=True)
        return mixer, self.ffn_part(config, index)

    def config_shape(self, config: Any) -> ModelShape:
        config = self.text_config(config)
        n_layer = int(config.num_hidden_layers)
        return ModelShape(config.hidden_size, n_layer, config.vocab_size,
                          tuple(self.layer_parts(config, i) for i in range(n_layer)))

    def ffn_part(self, config: Any, index: int) -> Part:
        """HF's rule: experts on every ``decoder_sparse_step``-th layer not in ``mlp_only_layers``."""
        experts = int(getattr(config, "num_experts", 0) or 0)
        sparse = (index + 1) % int(getattr(config, "decoder_sparse_step", 1) or 1) == 0
        if experts > 0 and index not in (getattr(config, "mlp_only_layers", None) or []) and sparse:
            return MoE(experts=experts, top_k=config.num_experts_per_tok, size=config.moe_intermediate_size,
                       shared_size=config.shared_expert_intermediate_size, gated=True, shared_gate=True)
        return MLP(size=config.intermediate_size, gated=True)

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        return block.linear_attn if block.block_type == "linear_attention" else None

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> Optional[ContextManager[None]]:
        mixer = self.mamba_mixer(block)
        return None if mixer is None else capture_delta_rule(mixer, store)

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        # the Gated DeltaNet forwards extra keywords to its conv and scan functions: give it only the padding mask
        if block.block_type == "linear_attention":
            return block(x, position_embeddings=None, attention_mask=call.ssm_mask, cache=call.cache)
        return block(x, position_embeddings=call.position_embeddings, attention_mask=call.attention_mask,
                     position_ids=call.position_ids, cache=call.cache)


ADAPTERS = (Qwen3NextFamily(),)
