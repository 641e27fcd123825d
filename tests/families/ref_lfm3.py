"""LFM3 prune-only reference from HF's own decoder layers and rotary module. The masks are written here: causal by
index (the kept tokens stay in order), and for a sliding layer restricted to keys whose ORIGINAL position lies in
the query's window (p − window < q ≤ p), the window rule of tor_exp/models/families/lfm3.py (see
test_lfm3.py for the check that this mask equals HF's own sliding mask on an unreduced sequence)."""
from __future__ import annotations

import torch
from torch import Tensor


def position_window_mask(positions: Tensor, window: int | None, implementation: str, dtype: torch.dtype) -> Tensor:
    """[1, 1, K, K]: causal, and within ``window`` of the given positions when a window is given."""
    p = positions[0]
    allowed = p[:, None] >= p[None, :]
    if window is not None:
        allowed &= (p[:, None] - p[None, :]) < window
    allowed = allowed[None, None]
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


def prune_reference(model, ids: Tensor, location: int, keep: Tensor, window_by_index: bool = False) -> Tensor:
    """``window_by_index``: the rejected rule (a window of ``window`` survivors by reduced index), for contrast."""
    base, config = model.model, model.config
    implementation = config._attn_implementation or "eager"
    h = base.embed_tokens(ids)

    def run(h: Tensor, layers: range, positions: Tensor) -> Tensor:
        rope = {kind: base.rotary_emb(h, position_ids=positions, layer_type=kind)
                for kind in base.rotary_emb.layer_types}
        for i in layers:
            layer, kind = base.layers[i], config.layer_types[i]
            if kind == "conv":
                h = layer(h, attention_mask=None)
                continue
            window = config.sliding_window if kind == "sliding_attention" else None
            where = torch.arange(positions.shape[1])[None] if window_by_index else positions
            mask = position_window_mask(where, window, implementation, h.dtype)
            h = layer(h, position_embeddings=rope[kind], attention_mask=mask, position_ids=positions)
        return h

    n = ids.shape[1]
    h = run(h, range(location + 1), torch.arange(n)[None])
    h = h[:, keep]
    h = run(h, range(location + 1, len(base.layers)), keep[None])
    return model.lm_head(base.embedding_norm(h)).float()
