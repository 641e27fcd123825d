"""Granite 4.0 hybrid prune-only reference from HF's own decoder layers, rotary module and causal mask (see
references.py), with the family's multipliers applied from the config as HF's model forward applies them: the
embeddings times ``embedding_multiplier``, the logits divided by ``logits_scaling`` (the residual and attention
multipliers live inside HF's layers)."""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask


def prune_reference(model, ids: Tensor, location: int, keep: Tensor) -> Tensor:
    base, config = model.model, model.config
    h = base.embed_tokens(ids) * config.embedding_multiplier

    def run(h: Tensor, layers: range, positions: Tensor) -> Tensor:
        causal = create_causal_mask(config=config, inputs_embeds=h, attention_mask=torch.ones_like(positions),
                                    cache=None, position_ids=positions)
        rotary = base.rotary_emb(h, positions) if config.position_embedding_type == "rope" else None
        for i in layers:
            layer = base.layers[i]
            mask = causal if layer.block_type == "full_attention" else None
            h = layer(h, attention_mask=mask, position_embeddings=rotary)
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return (model.lm_head(base.norm(h)) / config.logits_scaling).float()
