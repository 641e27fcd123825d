"""``reduction=none``: the unreduced model (the 0 % row of every table)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from tor_exp.reduction.base import ReductionConfig, ReductionMethod, register_method
from tor_exp.reduction.merge import ReductionPlan
from tor_exp.reduction.state import TokenState


@dataclass
class NoneConfig(ReductionConfig):
    """No reduction: nothing to configure beyond the shared keys (target_flops defaults to 0)."""

    method: str = "none"
    target_flops: Optional[float] = 0.0


@register_method("none", NoneConfig)
class NoReduction(ReductionMethod):
    """Identity: plans nothing, so ``reduce`` returns the state it is given."""

    def plan(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
             location: int) -> ReductionPlan | None:
        return None
