"""Two deliberately simple reduction methods used to test the model adapter independently of the real ones.

Both treat unreducible tokens (padding, protected) as absent, as every method must. Loops are fine here.
"""
from __future__ import annotations

import math

from torch import Tensor

from tor_exp.reduction.base import ReductionConfig, ReductionMethod
from tor_exp.reduction.state import TokenState


def kept_count(n: int, keep_ratio: float) -> int:
    return int(math.ceil(n * keep_ratio - 1e-9))


class KeepFirst(ReductionMethod):
    """Keep the first ceil(ρ·n) reducible tokens of each row (plus every unreducible real token), drop the rest."""

    def __init__(self, needs_ssm: bool = False):
        super().__init__(ReductionConfig(method="keep_first"))
        self.needs_ssm = needs_ssm
        self.seen: list[dict[str, Tensor]] = []

    @property
    def needed_features(self) -> set[str]:
        return {"ssm_out"} if self.needs_ssm else set()

    def reduce(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float, location: int) -> TokenState:
        self.seen.append({k: v.detach().clone() for k, v in features.items()} | {"valid": state.valid.clone(),
                                                                                  "location": location})
        keep = state.valid.clone()
        for b in range(state.batch_size):
            red = [j for j in range(state.length) if bool(state.reducible[b, j])]
            for j in red[kept_count(len(red), keep_ratio):]:
                keep[b, j] = False
        new, _ = state.keep(keep)
        return new


class MergeRight(ReductionMethod):
    """Remove the r = n − ceil(ρ·n) reducible tokens at even ranks 0, 2, 4, … (r ≤ ⌊n/2⌋) by merging each into
    the next reducible token on its right (plain mean of both streams, sizes added)."""

    def __init__(self):
        super().__init__(ReductionConfig(method="merge_right"))

    def reduce(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float, location: int) -> TokenState:
        hidden, residual, sizes = state.hidden.clone(), state.residual.clone(), state.sizes.clone()
        keep = state.valid.clone()
        for b in range(state.batch_size):
            red = [j for j in range(state.length) if bool(state.reducible[b, j])]
            r = min(len(red) - kept_count(len(red), keep_ratio), len(red) // 2)
            for i in range(r):
                src, dst = red[2 * i], red[2 * i + 1]
                hidden[b, dst] = (hidden[b, dst] + hidden[b, src]) / 2
                residual[b, dst] = (residual[b, dst] + residual[b, src]) / 2
                sizes[b, dst] += sizes[b, src]
                keep[b, src] = False
        new, _ = state.replace(hidden=hidden, residual=residual, sizes=sizes).keep(keep)
        return new
