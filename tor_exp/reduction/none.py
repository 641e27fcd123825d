"""``reduction=none``: the unreduced model (the 0 % row of every table)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from tor_exp.reduction.base import ReductionConfig, ReductionMethod, register_method
from tor_exp.reduction.merge import ReductionPlan
from tor_exp.reduction.state import TokenState


log = logging.getLogger(__name__)


@dataclass
class NoneConfig(ReductionConfig):
    """No reduction: nothing to configure beyond the shared keys. A FLOPs target or keep ratio given anyway (a sweep
    that crosses ``reduction=none,utrc`` with targets) is ignored and never recorded: an unreduced run has target 0."""

    method: str = "none"
    target_flops: Optional[float] = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.target_flops or 0.0) > 0.0 or self.keep_ratio is not None:
            log.info("reduction=none: reduction.target_flops=%s / keep_ratio=%s ignored (nothing is reduced)",
                     self.target_flops, self.keep_ratio)
        self.target_flops, self.keep_ratio = 0.0, None


@register_method("none", NoneConfig)
class NoReduction(ReductionMethod):
    """Identity: plans nothing, so ``reduce`` returns the state it is given."""

    def plan(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
             location: int) -> ReductionPlan | None:
        return None
