"""What a schedule means inside one forward: the keep ratio each location hands its method (per row for a
chunk-aligned schedule) and which layer's SSM output ranks the tokens at each location of a hybrid.

Below the backbone loop, which reads it at every location; :mod:`tor_exp.models.schedule` builds schedules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from tor_exp.errors import ConfigError
from tor_exp.models.shape import ModelShape


@dataclass
class Schedule:
    """Where to reduce ("after block l") and how much: the same ρ at every location (the paper), or, for a
    chunk-aligned schedule (``reduction.chunk_align``), one ratio per location (``keep_ratios``), each location's
    kept length rounded at run time to a multiple of ``chunk`` where ``aligned`` says so (METHOD.md §4)."""

    locations: list[int] = field(default_factory=list)
    keep_ratio: float = 1.0
    target_flops: Optional[float] = None
    keep_ratios: list[float] = field(default_factory=list)
    aligned: list[bool] = field(default_factory=list)
    chunk: int = 0

    def ratio(self, index: int) -> float:
        """The keep ratio of the ``index``-th location."""
        return self.keep_ratios[index] if self.keep_ratios else self.keep_ratio


def check_depth(key: str, locations: Sequence[int], n_layer: int) -> None:
    """The one rule for locations against a model's depth: "reduce after block l" needs a block after l, so
    every l lies in [0, n_layer - 2] (config keys and a schedule handed to ``patch`` alike)."""
    bad = [l for l in locations if not 0 <= l <= n_layer - 2]
    if bad:
        raise ConfigError(f"{key}={list(locations)}: locations {bad} outside [0, {n_layer - 2}] for a "
                          f"{n_layer}-layer model")


def location_keep(schedule: Schedule, index: int, state: Any, max_fraction: Optional[float]) -> Any:
    """What the method at the ``index``-th location receives as its keep ratio: the schedule's ratio, or for an
    aligned location a [B] tensor of per-row ratios whose kept length is the multiple of ``schedule.chunk`` nearest
    to ratio × the row's length, within what the method may remove (a row whose range holds no multiple keeps the
    plain ratio). Per row, so a row's result never depends on its batch."""
    rho = schedule.ratio(index)
    if not schedule.chunk or not schedule.aligned or not schedule.aligned[index]:
        return rho
    import torch

    q = float(schedule.chunk)
    n_valid = state.valid.sum(dim=1).to(torch.float64)
    n_red = (state.reducible & state.valid).sum(dim=1).to(torch.float64)
    cap = n_red if max_fraction is None else torch.floor(n_red * max_fraction)
    low, high = n_valid - cap, n_valid
    target = torch.floor(rho * n_valid / q + 0.5) * q
    kept = torch.where(target < low, torch.ceil(low / q) * q, target)
    kept = torch.where(kept > high, torch.floor(high / q) * q, kept)
    plain = n_valid - (n_red - torch.ceil(n_red * rho - 1e-9)).clamp(min=0).minimum(cap)
    kept = torch.where((kept >= low) & (kept <= high) & (kept > 0), kept, plain)
    removed = n_valid - kept
    return torch.where(n_red > 0, (n_red - removed) / n_red.clamp(min=1), torch.ones_like(n_red))


def importance_sources(method: Any, schedule: Schedule, shape: Optional[ModelShape]) -> dict[int, int]:
    """{location: the layer whose mixer output y ranks the tokens there} for a method that ranks on ``ssm_out``.

    The layer itself when one of its parts :attr:`~tor_exp.models.shape.Part.ranks` (a Mamba mixer, a short
    convolution, a delta rule), else the nearest such layer before it (an attention or MLP layer of a hybrid,
    METHOD.md §7). A location whose y would have to cross another location (the tokens changed in between), or that
    has no ranking layer before it, is a one-line ConfigError. Empty when the method does not need y.
    """
    if method is None or "ssm_out" not in (getattr(method, "needed_features", None) or set()):
        return {}
    ssm_layers = set(shape.ranking_layers()) if shape is not None else None
    sources: dict[int, int] = {}
    previous = -1
    for location in sorted(schedule.locations):
        if ssm_layers is None or location in ssm_layers:
            source = location
        else:
            before = [l for l in ssm_layers if l <= location]
            if not before:
                raise ConfigError(f"reduction.locations={sorted(schedule.locations)}: layer {location} has no mixer "
                                  "whose output ranks tokens at or before it (reduction.importance_source=ssm_out); move "
                                  "the location or use reduction.importance_source=mixer_out")
            source = max(before)
            if source <= previous:
                raise ConfigError(f"reduction.locations={sorted(schedule.locations)}: layer {location} ranks tokens "
                                  f"by the Mamba mixer of layer {source}, but the location at layer {previous} "
                                  "changes the tokens in between; move the location or use "
                                  "reduction.importance_source=mixer_out")
        sources[location] = source
        previous = location
    return sources
