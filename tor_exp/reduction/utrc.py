"""UTRC, paper mode (``reduction=utrc``): unified token reduction by token importance classification.

METHOD.md §2, per batch row over the reducible tokens only (n of them, r = n − ceil(ρ·n) ≤ ⌊n/2⌋):
calculate S → the ⌊n/2⌋ least important tokens form M_A, the rest M_B → connect each a to its most
similar b → retain the r most similar connections → prune / merge / hybrid per stream → reassemble in
original order. Rows with different n and r are handled in one batched pass.

Deterministic tie-breaking (so a row's result never depends on the other rows of its batch):
importance ties: the lower position counts as less important (stable ascending sort);
destination ties: the b with the lowest position; retention ties: the a with the lowest position;
hybrid prune choice ties: as the key's own order (importance rank or similarity rank).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tor_exp.errors import ConfigError
from tor_exp.reduction.base import (
    FEATURE_SOURCES,
    ReductionConfig,
    ReductionMethod,
    check_choice,
    check_importance_keys,
    check_range,
    register_method,
    removal_counts,
)
from tor_exp.reduction.importance import get_feature, token_importance
from tor_exp.reduction.matching import (
    best_match,
    compact_indices,
    floor_fraction,
    masked_argsort,
    ranks,
    retain_most_similar,
    scatter_mask,
    take_smallest,
)
from tor_exp.reduction.merge import ReductionPlan
from tor_exp.reduction.state import TokenState

STREAM_STRATEGIES = ("prune", "merge", "hybrid")
PRUNE_BY = ("importance", "similarity")


@dataclass
class UTRCConfig(ReductionConfig):
    """Paper-mode UTRC keys (METHOD.md §2); defaults are the paper's design choices."""

    method: str = "utrc"
    metric: str = "clip"
    importance_source: str = "ssm_out"
    similarity_source: str = "mixer_out"
    hidden: str = "hybrid"
    q: float = 0.5
    hybrid_prune_by: str = "importance"
    residual: str = "merge"
    residual_q: float = 0.5
    size_weighted: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_importance_keys(self.metric, self.importance_source)
        check_choice("reduction.similarity_source", self.similarity_source, FEATURE_SOURCES)
        check_choice("reduction.hidden", self.hidden, STREAM_STRATEGIES)
        check_choice("reduction.residual", self.residual, STREAM_STRATEGIES)
        check_choice("reduction.hybrid_prune_by", self.hybrid_prune_by, PRUNE_BY)
        check_range("reduction.q", self.q, 0.0, 1.0)
        check_range("reduction.residual_q", self.residual_q, 0.0, 1.0)
        if not isinstance(self.size_weighted, bool):
            raise ConfigError(f"reduction.size_weighted={self.size_weighted!r}: must be true or false")


def prune_selection(mode: str, q: float, retained: Tensor, prune_key: Tensor) -> Tensor:
    """Bool [B, MA]: which retained sources a stream prunes (the rest it merges).

    ``prune`` → all, ``merge`` → none, ``hybrid`` → ⌊q·r⌋ per row with the smallest ``prune_key``.
    """
    if mode == "prune":
        return retained
    if mode == "merge":
        return torch.zeros_like(retained)
    count = floor_fraction(q, retained.sum(dim=1))
    return take_smallest(prune_key, retained, count)


@register_method("utrc", UTRCConfig)
class UTRC(ReductionMethod):
    """Paper-mode UTRC over a TokenState (pure tensor code, no model knowledge)."""

    config: UTRCConfig

    @property
    def needed_features(self) -> set[str]:
        return {self.config.importance_source, self.config.similarity_source}

    def plan(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
             location: int) -> ReductionPlan | None:
        cfg = self.config
        counts = removal_counts(state, keep_ratio, self.max_fraction)
        if counts is None:
            return None
        reducible, n, r = counts
        # 1. calculate
        score = token_importance(get_feature(features, cfg.importance_source, "importance_source", state), cfg.metric)
        # 2. classify: rank ascending (least important first); the first ⌊n/2⌋ reducible tokens are M_A
        imp_rank = ranks(masked_argsort(score, reducible))
        in_a = reducible & (imp_rank < (n // 2)[:, None])
        in_b = reducible & ~in_a
        a_idx, a_valid = compact_indices(in_a)
        b_idx, b_valid = compact_indices(in_b)
        # 3. connect, 4. retain
        sim_features = get_feature(features, cfg.similarity_source, "similarity_source", state)
        g, dst = best_match(sim_features, a_idx, a_valid, b_idx, b_valid)
        retained, g_rank = retain_most_similar(g, a_valid, r)
        # 5. process: which retained sources each stream prunes
        if cfg.hybrid_prune_by == "importance":
            key = imp_rank.gather(1, a_idx)  # least important first
        else:
            key = g_rank  # most similar first
        prune_hidden = prune_selection(cfg.hidden, cfg.q, retained, key)
        prune_residual = prune_selection(cfg.residual, cfg.residual_q, retained, key)
        # 6. reassemble (apply_plan keeps survivors in original order; both streams lose `retained`)
        return ReductionPlan(
            keep=~scatter_mask(a_idx, retained, state.length),
            src=a_idx,
            dst=dst,
            merge_hidden=retained & ~prune_hidden,
            merge_residual=retained & ~prune_residual,
            weights=state.sizes.float() if cfg.size_weighted else None,
        )
