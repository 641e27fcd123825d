"""Falcon-Mamba prune-only reference from HF's own blocks (see references.py for the contract).

A pure SSM model: its blocks read no positions, so the kept tokens simply continue through HF's blocks."""
from __future__ import annotations

from torch import Tensor


def prune_reference(model, ids: Tensor, location: int, keep: Tensor) -> Tensor:
    backbone = model.backbone
    h = backbone.embeddings(ids)
    for i, block in enumerate(backbone.layers):
        if i == location + 1:
            h = h[:, keep]
        h = block(h)
    return model.lm_head(backbone.norm_f(h)).float()
