"""Token reduction methods over :class:`TokenState` (pure tensor code, no model knowledge).

Importing this package registers every method: ``none``, ``utrc``, ``evit``, ``pumer``, ``ltmp`` (paper
mode and baselines) and ``utrc_official``, ``evit_official``, ``pumer_official`` (parity with the released
code, METHOD.md §6). Modules: ``state`` (TokenState), ``importance`` (scores), ``matching`` (ranking, matching,
retention), ``merge`` (ReductionPlan, apply_plan), ``base`` (registry, the plan/reduce contract).
"""
from tor_exp.reduction import evit, ltmp, none, parity, pumer, utrc  # noqa: F401  (registration)
from tor_exp.reduction.base import (
    ReductionConfig,
    ReductionMethod,
    build_method,
    num_to_remove,
    register_method,
    registered_methods,
    ReductionObserver,
    run_reduction,
)
from tor_exp.reduction.merge import ReductionPlan, apply_plan
from tor_exp.reduction.state import TokenState

__all__ = [
    "ReductionObserver",
    "ReductionConfig",
    "ReductionMethod",
    "ReductionPlan",
    "TokenState",
    "apply_plan",
    "build_method",
    "num_to_remove",
    "register_method",
    "registered_methods",
    "run_reduction",
]
