"""Jamba prune-only reference from HF's own decoder layers (see references.py for the contract).

Jamba's attention has no positional embedding, so the kept tokens' original position ids only reach HF's mask
builder (an explicit all-ones 2-D mask keeps it from reading the gaps as packed sequences)."""
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
            attention = model.config.layers_block_type[i] == "attention"
            h = base.layers[i](h, attention_mask=causal if attention else None, position_ids=positions)
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return model.lm_head(base.final_layernorm(h)).float()
