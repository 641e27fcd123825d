"""Falcon-H1 prune-only reference from HF's own decoder layers (see references.py for the contract): the
embedding and LM-head µP multipliers from the config, as FalconH1Model / FalconH1ForCausalLM apply them; RoPE at
the kept tokens' original positions; the Mamba mixers without a padding mask (batch 1, no padding)."""
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
        rope = base.rotary_emb(h, position_ids=positions)
        for i in layers:
            h = base.layers[i](h, attention_mask=causal, mamba_attention_mask=None, position_ids=positions,
                               position_embeddings=rope)[0]
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return (model.lm_head(base.final_layernorm(h)) * config.lm_head_multiplier).float()
