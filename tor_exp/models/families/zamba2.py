"""Zamba2 (HF ``Zamba2ForCausalLM``): Mamba-2 decoder layers and hybrid layers that first run a shared transformer
block.

Checkpoints: Zyphra/Zamba2-1.2B, Zyphra/Zamba2-2.7B. ``config.layers_block_type`` lists each layer:
``linear_attention`` (``mamba`` in older configs) is a Mamba-2 decoder layer ``x + mamba(norm(x))``; ``hybrid`` is
``x + mamba(norm(x + linear(shared(x, e))))``, where ``shared`` is a transformer block (attention + gated MLP) whose
weights are shared by every ``num_mem_blocks``-th hybrid layer (with per-use LoRA adapters on its MLP and, with
``use_shared_attention_adapter``, on q/k/v) and ``e`` is the token's original embedding: the attention reads
``concat[x, e]`` (2·d_model features). The embedding stream therefore travels with the tokens and follows every
reduction plan (``streams``). Every layer holds a Mamba mixer, so a location at a hybrid layer ranks by its own y.
RoPE in the shared attention only with ``use_mem_rope``; a hybrid layer's cache slot holds both its keys/values and
its Mamba states (HF's ``hybrid`` cache layer).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn
from transformers import Zamba2Config, Zamba2ForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.hybrid import HybridFamily, LayerCall
from tor_exp.models.shape import MLP, Attention, Linear, Mamba2, ModelShape, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "zamba2", "hybrid": True, "model_types": ("zamba2",)},)

#: the name of the original-embedding stream (TokenState.streams)
EMBEDDINGS = "embeddings"
#: the layer kinds of ``config.layers_block_type``
_KINDS = ("linear_attention", "hybrid")
#: the tiny model's layers (conf/model/tiny_zamba2.yaml states them too)
_TINY_LAYERS = ["mamba", "mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba", "hybrid"]


def _layer_kinds(config: Any, key: str = "model.path: config.json's layers_block_type") -> list[str]:
    """Each layer's kind (HF has already renamed the legacy ``mamba`` to ``linear_attention``)."""
    kinds = list(config.layers_block_type)
    unknown = sorted(set(kinds) - set(_KINDS))
    if unknown:
        raise ConfigError(f"{key}: Zamba2 layers are mamba (linear_attention) or hybrid, not {', '.join(unknown)}")
    return kinds


class Zamba2Family(HybridFamily):
    family = "zamba2"

    def model_class(self) -> type:
        return Zamba2ForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(layers_block_type=_TINY_LAYERS, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=4 * tiny.d_model, num_mem_blocks=2, use_shared_attention_adapter=True,
                    adapter_rank=8, use_mem_rope=True)
        keys.update(tiny.config)
        kinds = keys["layers_block_type"] = [str(kind) for kind in keys["layers_block_type"]]  # HF wants a list
        if len(kinds) != tiny.n_layer or set(kinds) - {"mamba", *_KINDS}:
            raise ConfigError(f"model.tiny.config.layers_block_type={kinds}: one of mamba (or linear_attention) or "
                              f"hybrid per layer, model.tiny.n_layer={tiny.n_layer} layers")
        kv_heads = keys.get("num_key_value_heads") or keys["num_attention_heads"]
        if keys["use_shared_attention_adapter"] and kv_heads != keys["num_attention_heads"]:
            # HF adds each adapter's 2·d_model output to the k and v projections as well, so they must be as wide
            raise ConfigError(f"model.tiny.config.num_key_value_heads={kv_heads}: Zamba2's shared attention adapters "
                              f"need as many key/value heads as query heads ({keys['num_attention_heads']}); or set "
                              "model.tiny.config.use_shared_attention_adapter=false")
        config = Zamba2Config(
            **vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer, mamba_d_state=tiny.state_size,
            mamba_d_conv=tiny.conv_kernel, mamba_expand=tiny.expand, mamba_ngroups=tiny.n_groups,
            n_mamba_heads=tiny.d_model * tiny.expand // tiny.head_dim, chunk_size=tiny.chunk_size, use_cache=True,
            **keys,
        )
        return config

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        return self._parts(config, _layer_kinds(config)[index])

    def _parts(self, config: Any, kind: str) -> tuple[Part, ...]:
        """A Mamba-2 layer, or (in the order a hybrid layer computes them) the shared block — attention over
        concat[hidden, embeddings], a gated MLP over d_model features — its linear projection, the Mamba-2 mixer."""
        heads, head_dim = config.n_mamba_heads, config.mamba_headdim
        mixer = Mamba2(d_inner=heads * head_dim, heads=heads, head_dim=head_dim, state_size=config.mamba_d_state,
                       n_groups=config.mamba_ngroups, conv_kernel=config.mamba_d_conv, chunk_size=config.chunk_size)
        if kind != "hybrid":
            return (mixer,)
        attention = Attention(heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                              head_dim=config.attention_head_dim, width=config.attention_hidden_size,
                              adapter_rank=config.adapter_rank if config.use_shared_attention_adapter else 0)
        mlp = MLP(size=config.intermediate_size, gated=True, adapter_rank=config.adapter_rank)
        return attention, mlp, Linear(), mixer

    def config_shape(self, config: Any) -> ModelShape:
        kinds = _layer_kinds(config)
        return ModelShape(config.hidden_size, len(kinds), config.vocab_size,
                          tuple(self._parts(config, kind) for kind in kinds))

    def streams(self, model: nn.Module, embeddings: Tensor) -> dict[str, Tensor]:
        # the shared block reads each token's original embedding at every use
        return {EMBEDDINGS: embeddings}

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return model.model.final_layernorm(hidden if residual is None else residual + hidden)

    def rotary(self, model: nn.Module) -> Optional[nn.Module]:
        return model.model.rotary_emb if model.config.use_mem_rope else None

    def mamba_mixer(self, block: nn.Module) -> Optional[nn.Module]:
        decoder = getattr(block, "mamba_decoder", block)  # a hybrid layer's Mamba decoder layer, or the layer
        return decoder.mamba

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        # HF's layers take both masks (2-D for the Mamba mixer, 4-D for the shared attention) and their own index
        # (cache slot, adapter choice), positionally as Zamba2Model.forward passes them
        return block(x, call.streams[EMBEDDINGS], index, call.ssm_mask, call.attention_mask, cache=call.cache,
                     use_cache=call.cache is not None, position_embeddings=call.position_embeddings,
                     position_ids=call.position_ids)


ADAPTERS = (Zamba2Family(),)
