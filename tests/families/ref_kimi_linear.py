"""Kimi-Linear prune-only reference from HF's own decoder layers and causal mask (see references.py). The latent
attention has no positional embedding: after the location only the causal mask over the kept tokens matters."""
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
        for i in layers:
            layer = base.layers[i]
            mask = None if layer.block_type == "linear_attention" else causal
            h = layer(h, attention_mask=mask, position_ids=positions)
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return model.lm_head(base.norm(h)).float()
