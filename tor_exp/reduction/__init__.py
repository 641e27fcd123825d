"""Token reduction methods over :class:`TokenState` (pure tensor code, no model knowledge).

Importing this package registers every method: ``none``, ``utrc``, ``evit``, ``pumer``, ``ltmp`` (paper
mode and baselines) and ``utrc_official``, ``evit_official``, ``pumer_official`` (parity with the released
code, METHOD.md §6).
"""
from tor_exp.reduction import evit, ltmp, none, official, pumer, utrc  # noqa: F401  (registration)
from tor_exp.reduction.base import (
    ReductionConfig,
    ReductionMethod,
    build_method,
    num_to_remove,
    register_method,
    registered_methods,
)
from tor_exp.reduction.state import TokenState

__all__ = [
    "ReductionConfig",
    "ReductionMethod",
    "TokenState",
    "build_method",
    "num_to_remove",
    "register_method",
    "registered_methods",
]
