"""Zamba v1 (HF ``ZambaForCausalLM``, model_type ``zamba``): multi-head Mamba-1 decoder layers and hybrid layers
that first run a shared transformer block on concat[hidden, original embeddings].

Checkpoint: Zyphra/Zamba-7B-v1. ``config.layers_block_type`` lists each layer: ``linear_attention`` (``mamba`` in
older configs) is ``x + mamba(norm(x))``; ``hybrid`` is ``x + mamba(norm(x + linear(shared(concat[x, e]))))``, where
``shared`` is one transformer block (attention over 2·d_model features with no positional embedding, then a gated MLP
over d_model) whose weights every hybrid layer ties, and ``e`` is the token's original embedding — the embedding
stream travels with the tokens and follows every reduction plan, as in Zamba2 (whose adapter this subclasses). The
Mamba mixer is Mamba-1 split into ``n_mamba_heads`` independent heads (per-head x/dt projections and scans, one
selective-scan call per head); every layer holds one, so a location always ranks by its own y ([B, N, d_inner], the
heads' y before the gate, in channel order).

Padding: HF zeroes a padding token's input before ``in_proj`` and its conv output before the scan, so it adds
nothing to the state (dt·B·x = 0); its dt still decays the state, which is why the hybrid step puts padding first
(left) while a cache is filled, as for Jamba. With ``mamba_proj_bias`` ``in_proj`` would put its bias into the conv
windows of later real tokens: a forward hook zeroes ``in_proj``'s output at padding (a no-op without a bias).
"""
from __future__ import annotations

from typing import Any, ContextManager, Optional

from torch import Tensor, nn
from transformers import ZambaConfig, ZambaForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.models.families.capture import capture_mamba1
from tor_exp.models.families.hybrid import LayerCall
from tor_exp.models.families.zamba2 import EMBEDDINGS, Zamba2Family, _layer_kinds
from tor_exp.models.shape import MLP, Attention, Linear, Mamba1, Part

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "zamba", "hybrid": True, "model_types": ("zamba",)},)

#: the tiny model's layers (conf/model/tiny_zamba.yaml states them too)
_TINY_LAYERS = ["mamba", "mamba", "hybrid", "mamba", "mamba", "hybrid"]


class ZambaFamily(Zamba2Family):
    family = "zamba"

    def model_class(self) -> type:
        return ZambaForCausalLM

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        keys = dict(layers_block_type=_TINY_LAYERS, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=2 * tiny.d_model)
        keys.update(tiny.config)
        kinds = keys["layers_block_type"] = [str(kind) for kind in keys["layers_block_type"]]
        if len(kinds) != tiny.n_layer or set(kinds) - {"mamba", "linear_attention", "hybrid"}:
            raise ConfigError(f"model.tiny.config.layers_block_type={kinds}: one of mamba (or linear_attention) or "
                              f"hybrid per layer, model.tiny.n_layer={tiny.n_layer} layers")
        return ZambaConfig(**vocab, hidden_size=tiny.d_model, num_hidden_layers=tiny.n_layer,
                           mamba_d_state=tiny.state_size, mamba_d_conv=tiny.conv_kernel, mamba_expand=tiny.expand,
                           n_mamba_heads=tiny.d_model * tiny.expand // tiny.head_dim, tie_word_embeddings=False,
                           use_cache=True, **keys)

    def _parts(self, config: Any, kind: str) -> tuple[Part, ...]:
        """A Mamba layer, or (in the order a hybrid layer computes them) the shared block — attention over
        concat[hidden, embeddings], a gated MLP over d_model — its linear projection, the Mamba mixer. The heads
        split the Mamba-1 mixer's channels; its per-head x/dt projections add up to one Mamba-1's."""
        mixer = Mamba1(d_inner=int(config.mamba_expand) * config.hidden_size, state_size=config.mamba_d_state,
                       conv_kernel=config.mamba_d_conv, dt_rank=int(config.mamba_dt_rank))
        if kind != "hybrid":
            return (mixer,)
        attention = Attention(heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                              head_dim=config.attention_head_dim, width=config.attention_hidden_size)
        return attention, MLP(size=config.intermediate_size, gated=True), Linear(), mixer

    def layer_parts(self, config: Any, index: int) -> tuple[Part, ...]:
        return self._parts(config, _layer_kinds(config)[index])

    def rotary(self, model: nn.Module) -> Optional[nn.Module]:
        return None  # the shared attention has no positional embedding

    def capture_mixer(self, mixer: nn.Module, store: dict[str, Tensor]) -> ContextManager[None]:
        return capture_mamba1(mixer, store, by_head=True)

    def call_layer(self, model: nn.Module, index: int, block: nn.Module, x: Tensor, call: LayerCall) -> Tensor:
        # HF's layers take both masks (2-D for the Mamba mixer, 4-D for the shared attention) and their own index
        # (cache slot), positionally as ZambaModel.forward passes them
        args = (x, call.streams[EMBEDDINGS], index, call.ssm_mask, call.attention_mask)
        in_proj = self.mamba_mixer(block).in_proj
        if call.ssm_mask is None or in_proj.bias is None:
            return block(*args, cache=call.cache, use_cache=call.cache is not None)
        mask = call.ssm_mask[..., None]
        handle = in_proj.register_forward_hook(lambda _m, _a, out: out * mask.to(out.dtype))
        try:
            return block(*args, cache=call.cache, use_cache=call.cache is not None)
        finally:
            handle.remove()


ADAPTERS = (ZambaFamily(),)
