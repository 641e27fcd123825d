"""Zamba v1 prune-only reference from HF's own layers (see references.py for the contract).

Each HF layer takes the running hidden states and the tokens' original embeddings (the shared block reads
concat[hidden, embeddings]); after the location both are cut to the kept tokens. The shared attention has no
positional embedding, so only the causal mask over the kept tokens matters there.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask


def prune_reference(model, ids: Tensor, location: int, keep: Tensor) -> Tensor:
    base = model.model
    h = base.embed_tokens(ids)

    def run(h: Tensor, embeddings: Tensor, layers: range, positions: Tensor) -> Tensor:
        causal = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=torch.ones_like(positions),
                                    cache=None, position_ids=positions)
        for i in layers:
            h = base.layers[i](h, embeddings, i, None, causal)
        return h

    n = ids.shape[1]
    embeddings = h.clone()
    h = run(h, embeddings, range(location + 1), torch.arange(n)[None])
    h, embeddings = h[:, keep], embeddings[:, keep]
    h = run(h, embeddings, range(location + 1, len(base.layers)), keep[None])
    return model.lm_head(base.final_layernorm(h)).float()
