"""LTMP (Learned Thresholds token Merging and Pruning), post-training adaptation (``reduction=ltmp``).

Per location two thresholds: θ_p on importance (prune reducible tokens with S < θ_p) and θ_m on similarity
(then, among the remaining reducible tokens, A/B alternate as in ``pumer`` and every A whose best cosine
similarity to a B is > θ_m merges into it, plain mean, both streams). Pruning runs first so a pruned token
is never a merge source or destination. Counts per row vary with the content (ragged rows).

No training: thresholds are *calibrated*. Inside ``with method.calibrating():`` every ``plan`` (hence ``reduce``) call
computes, per location, the thresholds that remove exactly the scheduled count on that batch (the sum over
rows of r = n − ceil(ρ·n), capped at ⌊n/2⌋), of which round(prune_share · total) by pruning and the rest by
merging; thresholds are midpoints between consecutive order statistics of S (ascending) and of the best
similarities (descending) pooled over the batch's reducible tokens, and they are applied at once (so later
locations are calibrated on the states they will really see). On exit, each location's thresholds are frozen:
``freeze: pooled`` (default) takes the thresholds that remove the summed scheduled counts over all of its
calibration batches pooled together; ``freeze: mean`` averages the per-batch thresholds (simpler, but biased
for small batches). Uncalibrated inference raises ConfigError (no implicit
calibration: silently calibrating on evaluation data would leak it). ``state_dict``/``load_state_dict``
(or the ``thresholds_file`` config key, a JSON of the state dict) save and restore the thresholds.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

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
    num_to_remove,
    register_method,
)
from tor_exp.reduction.importance import get_feature, token_importance
from tor_exp.reduction.matching import alternate_sets, best_match, scatter_mask
from tor_exp.reduction.merge import ReductionPlan
from tor_exp.reduction.state import TokenState


FREEZE_RULES = ("pooled", "mean")


@dataclass
class LTMPConfig(ReductionConfig):
    """LTMP keys: ``metric``, ``importance_source``, ``similarity_source``, ``prune_share`` (fraction of the
    scheduled removal done by pruning during calibration), ``thresholds_file`` (JSON from ``state_dict``)."""

    method: str = "ltmp"
    metric: str = "clip"
    importance_source: str = "ssm_out"
    similarity_source: str = "mixer_out"
    prune_share: float = 0.5
    freeze: str = "pooled"
    thresholds_file: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_importance_keys(self.metric, self.importance_source)
        check_choice("reduction.similarity_source", self.similarity_source, FEATURE_SOURCES)
        check_range("reduction.prune_share", self.prune_share, 0.0, 1.0)
        check_choice("reduction.freeze", self.freeze, FREEZE_RULES)


@dataclass
class _BatchRecord:
    """What one calibration batch contributes at one location."""

    theta_m: float
    theta_p: float
    scores: Tensor  # importance of the batch's reducible tokens
    sims: Tensor  # best similarity of every A token (after the batch's own pruning)
    n_prune: int
    n_merge: int


def _threshold_below(values: Tensor, count: int) -> float:
    """θ with exactly ``count`` of ``values`` strictly below it (up to ties): midpoint of neighbours."""
    v = torch.sort(values.double()).values
    total = v.numel()
    if count <= 0:
        return -math.inf  # nothing scheduled: remove nothing on any input, not just the calibration values
    if count >= total:
        return float(torch.nextafter(v[-1], v.new_tensor(math.inf)))
    return float((v[count - 1] + v[count]) / 2)


def _threshold_above(values: Tensor, count: int) -> float:
    """θ with exactly ``count`` of ``values`` strictly above it (up to ties)."""
    v = torch.sort(values.double(), descending=True).values
    total = v.numel()
    if count <= 0:
        return math.inf  # nothing scheduled: merge nothing on any input
    if count >= total:
        return float(torch.nextafter(v[-1], v.new_tensor(-math.inf)))
    return float((v[count - 1] + v[count]) / 2)


@register_method("ltmp", LTMPConfig)
class LTMP(ReductionMethod):
    """Threshold-based merging + pruning with per-location thresholds calibrated post training."""

    counts_from_ratio = False  # thresholds decide each row's count

    config: LTMPConfig

    def __init__(self, config: LTMPConfig):
        super().__init__(config)
        #: location → (θ_m, θ_p), frozen thresholds used at inference.
        self.thresholds: dict[int, tuple[float, float]] = {}
        self._records: Optional[dict[int, list[_BatchRecord]]] = None
        if config.thresholds_file:
            if not os.path.isfile(config.thresholds_file):
                raise ConfigError(f"reduction.thresholds_file={config.thresholds_file!r}: file not found")
            with open(config.thresholds_file) as fh:
                self.load_state_dict(json.load(fh))

    @property
    def needed_features(self) -> set[str]:
        return {self.config.importance_source, self.config.similarity_source}

    # ------------------------------------------------------------------ calibration / persistence
    @property
    def is_calibrating(self) -> bool:
        return self._records is not None

    @contextlib.contextmanager
    def calibrating(self) -> Iterator["LTMP"]:
        """Record per-location thresholds on every ``plan``/``reduce`` inside; freeze them on exit (``freeze``)."""
        self._records = {}
        try:
            yield self
        finally:
            records, self._records = self._records, None
            for loc, batches in records.items():
                self.thresholds[loc] = self._freeze(batches)

    def _freeze(self, batches: list["_BatchRecord"]) -> tuple[float, float]:
        """One (θ_m, θ_p) from a location's calibration batches.

        ``mean``: the mean of the per-batch thresholds. ``pooled`` (default): the thresholds that remove the
        summed scheduled counts on all calibration batches pooled together — the mean of per-batch quantiles
        is a biased estimate of that pooled quantile when batches are small (measured in
        tests/reduction/test_ltmp.py on 5 batches: at a second location ``mean`` removes 159 vs 144 scheduled,
        ``pooled`` 150; at the first location ``pooled`` is exact, 181 vs 181, ``mean`` 183).
        """
        if self.config.freeze == "mean":
            t = torch.tensor([(b.theta_m, b.theta_p) for b in batches], dtype=torch.float64)
            return float(t[:, 0].mean()), float(t[:, 1].mean())
        scores = torch.cat([b.scores for b in batches])
        sims = torch.cat([b.sims for b in batches])
        theta_p = _threshold_below(scores, sum(b.n_prune for b in batches))
        theta_m = _threshold_above(sims, sum(b.n_merge for b in batches)) if sims.numel() else 1.0
        return theta_m, theta_p

    def calibrate(self, batches: Iterable[Any], forward: Callable[[Any], Any]) -> dict[int, tuple[float, float]]:
        """Run ``forward(batch)`` (a patched model's forward) on each calibration batch; return the thresholds."""
        with self.calibrating():
            for batch in batches:
                forward(batch)
        return dict(self.thresholds)

    def state_dict(self) -> dict[str, Any]:
        return {"method": "ltmp", "thresholds": {str(k): [v[0], v[1]] for k, v in sorted(self.thresholds.items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.thresholds = {int(k): (float(v[0]), float(v[1])) for k, v in state["thresholds"].items()}
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ConfigError(f"reduction.thresholds_file: not an LTMP state dict ({err})") from err

    # ------------------------------------------------------------------ reduction
    def plan(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
             location: int) -> ReductionPlan | None:
        cfg = self.config
        reducible = state.reducible & state.valid
        if not bool(reducible.any()):
            return None
        score = token_importance(get_feature(features, cfg.importance_source, "importance_source", state), cfg.metric)
        sim = get_feature(features, cfg.similarity_source, "similarity_source", state)

        if self.is_calibrating:
            total = int(num_to_remove(reducible.sum(dim=1), keep_ratio).sum().item())
            n_prune = int(math.floor(cfg.prune_share * total + 0.5))
            theta_p = _threshold_below(score[reducible], n_prune)
        elif location in self.thresholds:
            theta_m, theta_p = self.thresholds[location]
        else:
            raise ConfigError(
                f"reduction.method=ltmp: no calibrated thresholds for location {location}; run calibration "
                "batches inside `with method.calibrating():` or load them (reduction.thresholds_file)"
            )

        pruned = reducible & (score.double() < theta_p)  # float64: thresholds are exact midpoints
        a_idx, a_valid, b_idx, b_valid = alternate_sets(reducible & ~pruned)
        g, dst = best_match(sim, a_idx, a_valid, b_idx, b_valid)
        if self.is_calibrating:
            finite = g[torch.isfinite(g)]
            n_merge = min(total - int(pruned.sum().item()), finite.numel())
            theta_m = _threshold_above(finite, n_merge) if finite.numel() else 1.0
            self._records.setdefault(location, []).append(
                _BatchRecord(theta_m, theta_p, score[reducible].detach().double().cpu(), finite.detach().double().cpu(),
                             n_prune, n_merge)
            )
        merged = a_valid & torch.isfinite(g) & (g.double() > theta_m)

        # pruned tokens need no merge slot: a removed token without one is dropped from both streams
        removed = pruned | scatter_mask(a_idx, merged, state.length)
        return ReductionPlan(keep=~removed, src=a_idx, dst=dst, merge_hidden=merged, merge_residual=merged)
