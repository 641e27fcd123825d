"""EViT adapted to causal SSM language models (``reduction=evit``; METHOD.md §3).

Keep the most important tokens by S, in their original order. With ``fuse: true`` (default) the removed
tokens are not simply dropped: they are fused into one token, the S-weighted mean of the removed tokens,
which takes the place (position, slot) of the *last* removed token. Putting it there keeps causality: the
fused token only carries information from positions at or before its own, so no later information is moved
backwards in the sequence.

Count convention (so every method removes the same number of tokens for the same ρ): with fuse, the
top ``n − r − 1`` tokens are kept and ``r + 1`` are fused into 1, so the net removal is exactly r; when
r = 0 nothing happens (no fusion of a single token). Without fuse, the top ``n − r`` are kept.
Fusion weights are max(S, 0) (safe for ``unclipped`` scores); a row whose removed weights sum to 0 falls
back to the plain mean. EViT has no 50 % cap (it is not bipartite): r = n − ceil(ρ·n).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tor_exp.errors import ConfigError
from tor_exp.reduction.base import (
    ReductionConfig,
    ReductionMethod,
    check_importance_keys,
    register_method,
    removal_counts,
)
from tor_exp.reduction.importance import get_feature, token_importance
from tor_exp.reduction.matching import compact_indices, masked_argsort, ranks
from tor_exp.reduction.merge import ReductionPlan
from tor_exp.reduction.state import TokenState


@dataclass
class EViTConfig(ReductionConfig):
    """EViT keys: ``fuse`` (one S-weighted fused token for the removed ones), ``metric``, ``importance_source``."""

    method: str = "evit"
    fuse: bool = True
    metric: str = "clip"
    importance_source: str = "ssm_out"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.fuse, bool):
            raise ConfigError(f"reduction.fuse={self.fuse!r}: must be true or false")
        check_importance_keys(self.metric, self.importance_source)


@register_method("evit", EViTConfig)
class EViT(ReductionMethod):
    """Top-k by importance, optionally fusing the removed tokens into one placed last."""

    config: EViTConfig
    max_fraction = None  # top-k keeps ⌈ρ·n⌉ whatever ρ is

    @property
    def needed_features(self) -> set[str]:
        return {self.config.importance_source}

    def plan(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
             location: int) -> ReductionPlan | None:
        cfg = self.config
        counts = removal_counts(state, keep_ratio, self.max_fraction)
        if counts is None:
            return None
        reducible, n, r = counts
        score = token_importance(get_feature(features, cfg.importance_source, "importance_source", state), cfg.metric)
        # most important first; ties keep the lower position (stable)
        rank = ranks(masked_argsort(score, reducible, descending=True))
        if not cfg.fuse:
            removed = reducible & (rank >= (n - r)[:, None])
            return ReductionPlan.pruning(keep=~removed)
        n_keep = torch.where(r > 0, n - r - 1, n)
        removed = reducible & (rank >= n_keep[:, None])
        positions = torch.arange(state.length, device=removed.device).expand_as(removed)
        last = torch.where(removed, positions, -1).max(dim=1).values.clamp(min=0)  # slot of the last removed
        sources = removed & (positions != last[:, None])
        src_idx, src_valid = compact_indices(sources)
        dst = last[:, None].expand_as(src_idx)
        weights = score.clamp(min=0) * removed.float()
        total = weights.sum(dim=1, keepdim=True)
        weights = torch.where(total > 0, weights, removed.float())
        # the last removed token survives as the fused token: the other removed ones merge into it
        return ReductionPlan(keep=~sources, src=src_idx, dst=dst, merge_hidden=src_valid, merge_residual=src_valid,
                             weights=weights)
