"""Method registry, config schema and the decide-then-apply contract shared by every reduction method.

Adding a method = one module here (a config dataclass + a ``ReductionMethod`` subclass registered with
``@register_method`` that implements ``plan``) + one YAML file in ``conf/reduction/`` that starts from the
method's schema.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from torch import Tensor

from tor_exp.errors import ConfigError
from tor_exp.reduction.merge import ReductionPlan, apply_plan
from tor_exp.reduction.state import TokenState

IMPORTANCE_METRICS = ("clip", "unclipped", "l1", "l2")
FEATURE_SOURCES = ("ssm_out", "mixer_out", "residual")
IMPORTANCE_SOURCES = ("ssm_out", "mixer_out")
FLOPS_SCOPES = ("backbone", "total")


def check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, choices))}")


def check_range(key: str, value: float | None, low: float, high: float, *, high_open: bool = False) -> None:
    if value is None:
        return
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r}: must be in [{low}, {high}{bracket}")


def check_importance_keys(metric: str, importance_source: str) -> None:
    """The two keys every importance-ranking method (UTRC, EViT, LTMP) shares."""
    check_choice("reduction.metric", metric, IMPORTANCE_METRICS)
    check_choice("reduction.importance_source", importance_source, IMPORTANCE_SOURCES)


@dataclass
class ReductionConfig:
    """Keys every method shares: what to reduce where, and how much.

    ``keep_ratio`` (ρ) wins over ``target_flops`` (f) when both are set; with neither, nothing is reduced.
    ``locations`` null means the model's paper default; ``location_start``/``stride``/``stop`` build a
    list instead (stop defaults to the model depth).
    """

    #: True for the parity modes (``reduction/parity.py``), which run the authors' released code instead of the
    #: method the paper describes; a class attribute, not a config key. Code with only a method name asks the
    #: registry (``tor_exp.reduction.parity.is_parity``), never the name's spelling.
    parity: ClassVar[bool] = False

    method: str = "none"
    target_flops: Optional[float] = 0.2
    keep_ratio: Optional[float] = None
    flops_scope: str = "backbone"
    #: land each location's reduced length on a whole number of SSM scan chunks where possible, with per-location
    #: ratios solved so the FLOPs target still holds (METHOD.md §4); off = the paper's one ρ everywhere
    chunk_align: bool = False
    locations: Optional[list[int]] = None
    location_start: Optional[int] = None
    location_stride: Optional[int] = None
    location_stop: Optional[int] = None

    def __post_init__(self) -> None:
        check_range("reduction.target_flops", self.target_flops, 0.0, 1.0, high_open=True)
        if self.keep_ratio is not None and not (0.0 < self.keep_ratio <= 1.0):
            raise ConfigError(f"reduction.keep_ratio={self.keep_ratio!r}: must be in (0, 1]")
        check_choice("reduction.flops_scope", self.flops_scope, FLOPS_SCOPES)
        if self.location_stride is not None and self.location_stride <= 0:
            raise ConfigError(f"reduction.location_stride={self.location_stride!r}: must be > 0")


class ReductionMethod:
    """A token reduction at one location, in two steps: ``plan`` decides, :func:`apply_plan` carries it out.

    ``features`` holds the tensors a method may rank or match on, each [B, N, *]: ``mixer_out`` (the hidden
    stream, = state.hidden), ``residual`` and, when the adapter could capture it, ``ssm_out`` (the SSM output
    before gate / gated norm / out_proj). Methods must treat unreducible tokens as absent. A method implements
    ``plan``; ``reduce`` (plan, then apply) keeps it usable on its own. Parity methods that run the released
    code override ``reduce`` instead and make no plans (``makes_plans`` False).
    """

    name: ClassVar[str] = ""
    #: the largest share of a row's reducible tokens one location may remove (⌊n/2⌋ for bipartite matching);
    #: None = no cap
    max_fraction: ClassVar[Optional[float]] = 0.5
    #: removal counts follow from ρ alone (not thresholds), so a schedule may set them per row (chunk alignment)
    counts_from_ratio: ClassVar[bool] = True

    def __init__(self, config: ReductionConfig):
        self.config = config

    @property
    def needed_features(self) -> set[str]:
        """Feature sources this method reads; the adapter captures ``ssm_out`` only when listed."""
        return set()

    @property
    def makes_plans(self) -> bool:
        """True when the class implements :meth:`plan` (observers then see what it decided)."""
        return type(self).plan is not ReductionMethod.plan

    def plan(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
             location: int) -> Optional[ReductionPlan]:
        """What to remove at ``location`` and where it goes, per row; None when there is nothing to do."""
        raise NotImplementedError(f"{type(self).__name__} makes no ReductionPlan; call reduce()")

    def reduce(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float, location: int) -> TokenState:
        """The reduced state: ``apply_plan(state, plan(...))``."""
        return apply_plan(state, self.plan(state, features, keep_ratio, location))


class ReductionObserver:
    """Watches the reductions of a backbone loop (timing, token flow); the defaults do nothing.

    ``plan`` is what the method decided; None for methods that reduce in one call (the parity modes), and
    ``after is before`` when there was nothing to do.
    """

    def before_reduce(self, location: int, state: TokenState) -> None:
        pass

    def after_reduce(self, location: int, before: TokenState, plan: Optional[ReductionPlan],
                     after: TokenState) -> None:
        pass


def run_reduction(method: ReductionMethod, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
                  location: int, observers: Sequence[ReductionObserver] = ()) -> TokenState:
    """One reduction step of a backbone loop: decide (``plan``), apply (``apply_plan``), tell the observers.

    Methods without plans (the parity modes) run their own ``reduce``.
    """
    for observer in observers:
        observer.before_reduce(location, state)
    if method.makes_plans:
        plan = method.plan(state, features, keep_ratio, location)
        after = apply_plan(state, plan)
    else:
        plan, after = None, method.reduce(state, features, keep_ratio, location)
    for observer in observers:
        observer.after_reduce(location, state, plan, after)
    return after


_METHODS: dict[str, tuple[type, type]] = {}


def register_method(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: register a method under ``name`` with its config dataclass (its Hydra schema)."""

    def wrap(cls: type) -> type:
        cls.name = name
        _METHODS[name] = (config_cls, cls)
        return cls

    return wrap


def registered_methods() -> dict[str, tuple[type, type]]:
    return dict(_METHODS)


def build_method(config: ReductionConfig) -> ReductionMethod:
    """Instantiate the method a (validated) config names."""
    if config.method not in _METHODS:
        raise ConfigError(f"reduction.method={config.method!r}: must be one of {', '.join(sorted(_METHODS))}")
    _, cls = _METHODS[config.method]
    return cls(config)


def num_to_remove(num_reducible: Tensor, keep_ratio: float | Tensor,
                  max_fraction: float | None = 0.5) -> Tensor:
    """Per-row removal count r = n − ceil(ρ·n), capped at ⌊n·max_fraction⌋ (⌊n/2⌋ for bipartite methods).

    ``keep_ratio``: one ρ, or a [B] float64 tensor of per-row ratios (a chunk-aligned schedule). A tiny epsilon
    keeps ceil from rounding 0.9*10 = 9.000000001 up to 10.
    """
    n = num_reducible.to(torch.float64)
    keep = torch.ceil(n * keep_ratio - 1e-9)
    r = (n - keep).clamp(min=0)
    if max_fraction is not None:
        r = torch.minimum(r, torch.floor(n * max_fraction))
    return r.to(torch.long)


def removal_counts(state: TokenState, keep_ratio: float | Tensor,
                   max_fraction: float | None = 0.5) -> tuple[Tensor, Tensor, Tensor] | None:
    """(reducible [B,N], n [B], r [B]) at this location, or None when no row removes anything (skip the work)."""
    reducible = state.reducible & state.valid
    n = reducible.sum(dim=1)
    r = num_to_remove(n, keep_ratio, max_fraction)
    if r.numel() == 0 or int(r.max().item()) == 0:
        return None
    return reducible, n, r
