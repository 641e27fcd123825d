"""LFM2-MoE prune-only reference from HF's own decoder layers, rotary module and causal mask (see references.py)."""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask


def prune_reference(model, ids: Tensor, location: int, keep: Tensor) -> Tensor:
    base = model.model
    h = base.embed_tokens(ids)

    def run(h: Tensor, layers: range, positions: Tensor) -> Tensor:
        causal = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=torch.ones_like(positions),
                                    cache=None, position_ids=positions)
        rotary = base.pos_emb(h, position_ids=positions)  # RoPE at the given (original) positions
        for i in layers:
            layer = base.layers[i]
            mask = causal if layer.is_attention_layer else None
            h = layer(h, position_embeddings=rotary, attention_mask=mask, position_ids=positions)
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return model.lm_head(base.embedding_norm(h)).float()
