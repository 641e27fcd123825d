"""Nemotron-H prune-only reference from HF's own blocks (see references.py for the contract)."""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask


def prune_reference(model, ids: Tensor, location: int, keep: Tensor) -> Tensor:
    base = model.model
    h = base.embeddings(ids)

    def run(h: Tensor, layers: range, positions: Tensor) -> Tensor:
        causal = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=torch.ones_like(positions),
                                    cache=None, position_ids=positions)
        for i in layers:
            block = base.layers[i]
            mask = causal if block.block_type == "full_attention" else None
            h = block(h, attention_mask=mask, position_ids=positions)
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return model.lm_head(base.norm_f(h)).float()
