"""Token importance scores and feature lookup: what a method ranks tokens by (METHOD.md §1).

Ranking and matching live in :mod:`tor_exp.reduction.matching`; applying a decision lives in
:mod:`tor_exp.reduction.merge`.
"""
from __future__ import annotations

from torch import Tensor

from tor_exp.errors import ConfigError
from tor_exp.reduction.base import IMPORTANCE_METRICS
from tor_exp.reduction.state import TokenState


def token_importance(y: Tensor, metric: str = "clip") -> Tensor:
    """Per-token importance S [B, N] (float32) from features y [B, N, D] (METHOD.md §1, paper eq. 5).

    ``clip`` mean_d max(0, y_d) | ``unclipped`` mean_d y_d | ``l1`` mean_d |y_d| | ``l2`` sqrt(sum_d y_d²).
    Computed in float32 so half-precision models rank the same way as fp32 ones up to input rounding.
    """
    y = y.float()
    if metric == "clip":
        return y.clamp(min=0).mean(dim=-1)
    if metric == "unclipped":
        return y.mean(dim=-1)
    if metric == "l1":
        return y.abs().mean(dim=-1)
    if metric == "l2":
        return y.pow(2).sum(dim=-1).sqrt()
    raise ConfigError(f"reduction.metric={metric!r}: must be one of {', '.join(IMPORTANCE_METRICS)}")


def get_feature(features: dict[str, Tensor], source: str, key: str, state: TokenState | None = None) -> Tensor:
    """``features[source]``; ``mixer_out``/``residual`` fall back to the state's streams (they are the same
    tensors); anything else missing is a one-line error naming the config key that asked for it."""
    value = features.get(source) if features else None
    if value is not None:
        return value
    if state is not None and source == "mixer_out":
        return state.hidden
    if state is not None and source == "residual":
        return state.residual
    available = ", ".join(sorted(k for k, v in (features or {}).items() if v is not None)) or "none"
    raise ConfigError(
        f"reduction.{key}={source!r}: the model adapter did not provide '{source}' features (available: {available})"
    )
