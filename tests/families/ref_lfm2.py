"""LFM2 prune-only reference from HF's own decoder layers, rotary module and causal mask (see references.py): the
short-convolution layers get no mask (batch 1, no padding), the attention layers RoPE at the kept tokens' original
positions; the final norm is HF's ``embedding_norm``."""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask


def prune_reference(model, ids: Tensor, location: int, keep: Tensor) -> Tensor:
    base, config = model.model, model.config
    h = base.embed_tokens(ids)

    def run(h: Tensor, layers: range, positions: Tensor) -> Tensor:
        causal = create_causal_mask(config=config, inputs_embeds=h, attention_mask=torch.ones_like(positions),
                                    cache=None, position_ids=positions)
        rotary = base.rotary_emb(h, positions)
        for i in layers:
            conv = config.layer_types[i] == "conv"
            h = base.layers[i](h, position_embeddings=rotary, attention_mask=None if conv else causal,
                               position_ids=positions)
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return model.lm_head(base.embedding_norm(h)).float()
