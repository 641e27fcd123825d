"""Where and how much to reduce: locations, the keep ratio ρ solved from a FLOPs target, and putting a
reduction into a model for a block of work.

Conventions (METHOD.md §0, §4): "reduce after block l" — blocks l+1 … see the shorter sequence; the same keep
ratio ρ at every location, so after k locations ρ^k·N tokens remain (continuous, no ceil, when solving). ``f`` is
defined on backbone FLOPs at the input length unless ``scope="total"`` (:func:`tor_exp.models.flops.flops_reduction`).

Every caller (the eval and generate tasks, the benchmarks, the lm-eval backend built by name) goes through
:func:`build_reduction` and :func:`reducing`, so a method that needs calibration (LTMP) always sees the same text.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from torch import nn

from tor_exp.errors import ConfigError
from tor_exp.models.flops import flops_reduction, kept_lengths_reduction
from tor_exp.models.locations import Schedule, check_depth, importance_sources
from tor_exp.models.shape import ModelShape

if TYPE_CHECKING:  # the typed configs (tor_exp.config validates them); not imported at run time
    from tor_exp.models.config import ModelConfig
    from tor_exp.reduction.base import ReductionConfig

log = logging.getLogger(__name__)


def resolve_locations(reduction: "ReductionConfig", model: "ModelConfig",
                      shape: Optional[ModelShape] = None) -> list[int]:
    """Explicit list, or start/stride/stop (stop defaults to the depth), or the model's default (its config's list,
    else :func:`default_locations` for its depth and layers). The one place locations are checked against the
    depth (the schemas check what they can know without it).

    ``shape``: the model's layers, when the model config does not state its depth (read from the checkpoint).
    """
    return location_list(reduction, int(shape.n_layer if shape is not None else model.n_layer), model.locations,
                         shape)


def location_list(reduction: "ReductionConfig", n_layer: int, model_locations: Optional[Sequence[int]],
                  shape: Optional[ModelShape] = None) -> list[int]:
    """:func:`resolve_locations` from the depth and the model's own locations alone (a record's config)."""
    if reduction.locations is not None:
        locs = [int(l) for l in reduction.locations]
        key = "reduction.locations"
    elif reduction.location_start is not None:
        stride = reduction.location_stride or 1
        stop = n_layer - 1 if reduction.location_stop is None else int(reduction.location_stop)
        locs = list(range(int(reduction.location_start), stop, int(stride)))
        key = "reduction.location_start"
    else:
        locs = [int(l) for l in (model_locations if model_locations is not None else
                                 default_locations(n_layer, shape))]
        key = "model.locations"
    check_depth(key, locs, n_layer)
    if len(set(locs)) != len(locs):
        raise ConfigError(f"{key}={locs}: duplicate locations")
    rho, target = reduction.keep_ratio, reduction.target_flops
    reduces = reduction.method != "none" and (
        (rho is not None and rho < 1.0) or (rho is None and (target or 0.0) > 0.0))
    if not locs and reduces:
        raise ConfigError(f"{key}={locs}: no reduction locations, so reduction={reduction.method} cannot reduce "
                          "anything; give at least one location (or reduction=none)")
    return sorted(locs)


def default_locations(n_layer: int, shape: Optional[ModelShape] = None) -> list[int]:
    """The paper's hierarchical pattern scaled to a depth (a checkpoint whose config gives none): start after
    about 20 % of the layers, stop by about 70 %, one location every ~8 % of the depth (at least one layer). In a
    hybrid each location moves to the nearest layer at or before it that holds a Mamba mixer (never before the
    previous location), so every location ranks its tokens by its own layer's output (a layer with a part that
    :attr:`~tor_exp.models.shape.Part.ranks`; where every layer ranks, the plain pattern)."""
    start, stop = max(1, round(0.2 * n_layer)), max(1, round(0.7 * n_layer))
    stride = max(1, round(0.08 * n_layer))
    plain = [l for l in range(start, stop + 1, stride) if l <= n_layer - 2]
    if shape is None:
        return plain
    mixers, moved = set(shape.ranking_layers()), []
    for l in plain:
        candidates = [m for m in mixers if (moved[-1] if moved else -1) < m <= l]
        if candidates:
            moved.append(max(candidates))
    return moved


def solve_keep_ratio(
    n_layer: int,
    locations: Sequence[int],
    target_flops: float,
    scope: str = "backbone",
    shape: Optional[ModelShape] = None,
    seq_len: Optional[int] = None,
    logits: str = "all",
    tol: float = 1e-10,
) -> float:
    """ρ in (0, 1] whose schedule removes ``target_flops`` of the FLOPs (bisection; f is monotone in ρ). The
    range of ``target_flops`` is the schema's rule (:class:`~tor_exp.reduction.base.ReductionConfig`); this
    checks only what needs the model: whether the locations can reach it."""
    if target_flops <= 0.0 or not locations:
        if target_flops > 0.0:
            raise ConfigError(f"reduction.locations=[]: no reduction locations to reach "
                              f"reduction.target_flops={target_flops}")
        return 1.0
    f = lambda rho: flops_reduction(n_layer, locations, rho, scope, shape, seq_len, logits)  # noqa: E731
    best = f(1e-12)
    if target_flops > best:
        raise ConfigError(
            f"reduction.target_flops={target_flops}: above the {best:.4f} reachable with locations {list(locations)}"
        )
    lo, hi = 1e-12, 1.0  # f(lo) >= target >= f(hi) = 0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if f(mid) >= target_flops:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def needs_shape(reduction: "ReductionConfig", model: "ModelConfig") -> bool:
    """Solving ρ needs the model's shape: total-scope FLOPs, a hybrid whose layers cost differently, or a
    chunk-aligned schedule (the chunk size)."""
    from tor_exp.models.families.registry import family_info

    info = family_info(model.family)  # None for auto: any family may come
    return (reduction.flops_scope == "total" or info is None or info.hybrid or reduction.chunk_align
            or model.n_layer is None)


def holds_for(schedule: Schedule, solved_on: Optional[ModelShape], reduction: "ReductionConfig",
              model: "ModelConfig", loaded: ModelShape) -> bool:
    """Whether a schedule solved before loading (:func:`tor_exp.config.validate`) is the one the loaded model
    gets, so the job reuses it instead of solving again: solved on the very same shape, or solved without one
    (``solved_on`` None: :func:`needs_shape` was false) for a model of the loaded depth whose layers are all alike
    and all rank tokens, where the shape does not enter the solution (backbone FLOPs are the token average)."""
    if solved_on is not None:
        return solved_on == loaded
    return (not needs_shape(reduction, model) and model.n_layer == loaded.n_layer and loaded.uniform
            and len(loaded.ranking_layers()) == loaded.n_layer)


#: a chunk-aligned schedule meets its FLOPs target within this (absolute, in reduction units)
ALIGN_TOLERANCE = 0.005


def align_schedule(schedule: Schedule, n_layer: int, chunk: int, seq_len: int, *, shape: Optional[ModelShape],
                   scope: str = "backbone", logits: str = "all", max_fraction: Optional[float] = 0.5) -> Schedule:
    """The chunk-aligned form of a solved schedule at ``seq_len`` tokens.

    Every location but the last keeps one of the two chunk multiples around the plain schedule's length (within what
    one location may remove); the last keeps exactly the count that meets the FLOPs target. Of the combinations that
    meet it within :data:`ALIGN_TOLERANCE`, the one with the most locations on a chunk multiple wins, then the one
    closest to the plain schedule. Per-location ratios are the kept lengths' ratios; a location is ``aligned`` when
    its kept length is a chunk multiple (run time then rounds each row's length to a multiple, which reproduces these
    lengths exactly at ``seq_len``). Without any combination that meets the target, the plain schedule is kept.
    """
    import itertools

    locations, rho = list(schedule.locations), schedule.keep_ratio
    if not chunk or not locations or rho >= 1.0:
        return schedule
    n = float(seq_len)
    goal = schedule.target_flops
    if goal is None:
        goal = kept_lengths_reduction(shape, n_layer, locations, [rho ** (i + 1) * n for i in range(len(locations))],
                                       n, scope, logits)
    keep_min = 0.0 if max_fraction is None else 1.0 - max_fraction
    ideal = [rho ** (i + 1) * n for i in range(len(locations))]

    def reduction(kept: list[float]) -> float:
        return kept_lengths_reduction(shape, n_layer, locations, kept, n, scope, logits)

    def last_exact(prefix: list[float]) -> Optional[float]:
        """The count the last location keeps so that the target is met (None when it cannot be)."""
        previous = prefix[-1] if prefix else n
        low = float(math.ceil(previous * keep_min - 1e-9))
        lo, hi = max(low, 1.0), previous
        if reduction(prefix + [lo]) < goal - ALIGN_TOLERANCE or reduction(prefix + [hi]) > goal + ALIGN_TOLERANCE:
            return None
        while hi - lo > 1:  # fewer kept tokens, more reduction: the largest count that still reaches the goal
            mid = float(math.floor((lo + hi) / 2))
            lo, hi = (mid, hi) if reduction(prefix + [mid]) >= goal else (lo, mid)
        best = min((lo, hi), key=lambda k: abs(reduction(prefix + [k]) - goal))
        snapped = float(math.floor(best / chunk + 0.5) * chunk)
        if low <= snapped <= previous and snapped > 0 and abs(reduction(prefix + [snapped]) - goal) <= ALIGN_TOLERANCE:
            return snapped
        return best

    candidates = []
    for i, k in enumerate(ideal[:-1]):
        around = {float(math.floor(k / chunk) * chunk), float(math.ceil(k / chunk) * chunk)}
        candidates.append(sorted(c for c in around if c > 0))
    best_key, best = None, None
    for prefix in itertools.product(*candidates):
        kept, previous, feasible = list(prefix), n, True
        for k in kept:
            if not math.ceil(previous * keep_min - 1e-9) <= k <= previous:
                feasible = False
                break
            previous = k
        if not feasible:
            continue
        last = last_exact(kept)
        if last is None:
            continue
        kept.append(last)
        if abs(reduction(kept) - goal) > ALIGN_TOLERANCE:
            continue
        aligned = sum(1 for k in kept if k % chunk == 0)
        key = (-aligned, sum(abs(k - i) for k, i in zip(kept, ideal)))
        if best_key is None or key < best_key:
            best_key, best = key, kept
    if best is None:
        log.info("reduction.chunk_align: no chunk-aligned lengths meet the FLOPs target at %d tokens; plain schedule",
                 seq_len)
        return schedule
    ratios = [k / p for k, p in zip(best, [n, *best[:-1]])]
    return Schedule(locations=locations, keep_ratio=rho, target_flops=schedule.target_flops, keep_ratios=ratios,
                    aligned=[k % chunk == 0 for k in best], chunk=chunk)


def build_schedule(
    reduction: "ReductionConfig",
    model: "ModelConfig",
    seq_len: Optional[int] = None,
    shape: Optional[ModelShape] = None,
    logits: str = "all",
) -> Schedule:
    """Locations + ρ for a run: ``keep_ratio`` if given, else solved from ``target_flops``, else 1 (no-op).

    Total-scope FLOPs and hybrids need ``shape`` (``tor_exp.models.model_shape(model)`` once loaded); tiny and local
    model configs provide it themselves (:func:`tor_exp.models.loading.shape_from_model_config`). The values'
    ranges are the schemas' rules (checked when the configs were built); this checks what needs the model.
    """
    if shape is None and needs_shape(reduction, model):
        from tor_exp.models.loading import shape_from_model_config

        shape = shape_from_model_config(model)
    if shape is None and model.n_layer is None:
        raise ConfigError(f"model.n_layer=null: the depth of model.path={model.path!r} is known once it is loaded "
                          "(or its config.json is in the local cache)")
    n_layer = int(shape.n_layer if shape is not None else model.n_layer)
    locations = resolve_locations(reduction, model, shape)
    if reduction.method == "none":
        return Schedule(locations=locations, keep_ratio=1.0, target_flops=0.0)
    rho, target = reduction.keep_ratio, reduction.target_flops
    if rho is not None:
        return Schedule(locations=locations, keep_ratio=float(rho), target_flops=target)
    if target is None:
        return Schedule(locations=locations, keep_ratio=1.0, target_flops=None)
    scope = reduction.flops_scope
    rho = solve_keep_ratio(n_layer, locations, float(target), scope, shape, seq_len, logits)
    schedule = Schedule(locations=locations, keep_ratio=rho, target_flops=float(target))
    if reduction.chunk_align:
        schedule = _aligned(schedule, reduction.method, n_layer, shape, seq_len, scope, logits)
    return schedule


def _aligned(schedule: Schedule, method: str, n_layer: int, shape: Optional[ModelShape],
             seq_len: Optional[int], scope: str, logits: str) -> Schedule:
    from tor_exp.models.flops import DEFAULT_SEQ_LEN
    from tor_exp.reduction import registered_methods

    method_cls = registered_methods()[method][1]
    if not method_cls.counts_from_ratio:
        raise ConfigError(f"reduction.chunk_align=true: reduction={method} does not set its removal "
                          "counts from the keep ratio, so they cannot be aligned to chunks")
    chunk = shape.chunk if shape is not None else 0
    if not chunk:
        log.info("reduction.chunk_align=true: no part of the model scans in chunks; nothing to align")
        return schedule
    return align_schedule(schedule, n_layer, chunk, int(seq_len or DEFAULT_SEQ_LEN), shape=shape, scope=scope,
                          logits=logits, max_fraction=method_cls.max_fraction)


def build_reduction(reduction: "ReductionConfig", model: "ModelConfig", *, shape: Optional[ModelShape] = None,
                    seq_len: Optional[int] = None, logits: str = "all",
                    schedule: Optional[Schedule] = None) -> tuple[Any, Schedule]:
    """(method, schedule) for a validated reduction config on a model; the method is None for ``none``.

    ``schedule``: one already solved for this model (:attr:`tor_exp.config.ValidatedConfig.schedule`, when
    :func:`holds_for` says it holds), used as it is instead of solving again.
    """
    from tor_exp.reduction import build_method

    if schedule is None:
        schedule = build_schedule(reduction, model, seq_len=seq_len, shape=shape, logits=logits)
    method = None if reduction.method == "none" else build_method(reduction)
    importance_sources(method, schedule, shape)
    return method, schedule


def share_calibration(method: Any) -> None:
    """In a data-parallel run every rank takes rank 0's calibrated thresholds, so every replica reduces with the
    same ones whatever its device's arithmetic (each rank calibrated on the same text; one process: no-op)."""
    from tor_exp import distributed

    if distributed.world_size() > 1 and hasattr(method, "state_dict"):
        method.load_state_dict(distributed.broadcast_object(method.state_dict()))


@contextmanager
def reducing(model: nn.Module, method: Any, schedule: Optional[Schedule], *, tokenizer: Any = None,
             calibration_source: Optional[str] = None, record: Optional[dict[str, Any]] = None) -> Iterator[nn.Module]:
    """``model`` patched with ``method`` at ``schedule`` (and calibrated) for the block; unpatched afterwards.

    ``method`` None (the ``none`` reduction) yields the plain model. ``record`` receives
    ``calibration_sequences`` when a calibration ran.
    """
    from tor_exp.models.calibration import calibrate, calibration_text, needs_calibration
    from tor_exp.models.patching import patch, unpatch

    if method is None:
        yield model
        return
    if schedule is None:
        raise ValueError("reducing(): a method needs a schedule")
    patch(model, method, schedule)
    try:
        if needs_calibration(method):
            if tokenizer is None:
                raise ValueError(f"reducing(): {type(method).__name__} needs calibration text and a tokenizer")
            used = calibrate(method, model, tokenizer, calibration_text(calibration_source), schedule=schedule,
                             source=calibration_source)
            if record is not None:
                record["calibration_sequences"] = used
            share_calibration(method)
        yield model
    finally:
        unpatch(model)
