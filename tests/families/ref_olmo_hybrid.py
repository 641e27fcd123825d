"""OLMo-Hybrid prune-only reference from HF's own decoder layers, rotary module and causal mask (see references.py):
the Gated DeltaNet layers get no mask (batch 1, no padding) and no positions, the attention layers RoPE (when the
config has it, as the tiny one does) at the kept tokens' original positions."""
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
        rotary = base.rotary_emb(h, positions) if base.rotary_emb is not None else None
        for i in layers:
            if config.layer_types[i] == "linear_attention":
                h = base.layers[i](h)
            else:
                h = base.layers[i](h, attention_mask=causal, position_ids=positions, position_embeddings=rotary)
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return model.lm_head(base.norm(h)).float()
