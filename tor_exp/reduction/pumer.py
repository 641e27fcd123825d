"""PuMer / ToMe-style bipartite merging for causal SSM language models (``reduction=pumer``; METHOD.md §3).

The paper's framing of PuMer for text-only models: importance is ignored; the reducible tokens, in position
order, alternate A (0th, 2nd, …) and B (1st, 3rd, …); every A connects to its most similar B (cosine on
``similarity_source``) and the r most similar A are merged into their B (plain mean, both streams), so
r ≤ ⌊n/2⌋. PuMer's text-informed *pruning* of image tokens has no counterpart without a second modality,
so only its merging half exists here. Ties: first maximal B (lowest position), then lowest-position A.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tor_exp.reduction.base import (
    FEATURE_SOURCES,
    ReductionConfig,
    ReductionMethod,
    check_choice,
    register_method,
    removal_counts,
)
from tor_exp.reduction.importance import get_feature
from tor_exp.reduction.matching import alternate_sets, best_match, retain_most_similar, scatter_mask
from tor_exp.reduction.merge import ReductionPlan
from tor_exp.reduction.state import TokenState


@dataclass
class PuMerConfig(ReductionConfig):
    """PuMer keys: ``similarity_source`` (mixer_out | ssm_out | residual)."""

    method: str = "pumer"
    similarity_source: str = "mixer_out"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("reduction.similarity_source", self.similarity_source, FEATURE_SOURCES)


@register_method("pumer", PuMerConfig)
class PuMer(ReductionMethod):
    """Importance-free bipartite merging (ToMe matching) over the reducible tokens."""

    config: PuMerConfig

    @property
    def needed_features(self) -> set[str]:
        return {self.config.similarity_source}

    def plan(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
             location: int) -> ReductionPlan | None:
        counts = removal_counts(state, keep_ratio, self.max_fraction)
        if counts is None:
            return None
        reducible, _, r = counts
        a_idx, a_valid, b_idx, b_valid = alternate_sets(reducible)
        sim = get_feature(features, self.config.similarity_source, "similarity_source", state)
        g, dst = best_match(sim, a_idx, a_valid, b_idx, b_valid)
        retained, _ = retain_most_similar(g, a_valid, r)
        return ReductionPlan(keep=~scatter_mask(a_idx, retained, state.length), src=a_idx, dst=dst,
                             merge_hidden=retained, merge_residual=retained)
