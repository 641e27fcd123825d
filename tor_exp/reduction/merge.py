"""Decide, then apply: the :class:`ReductionPlan` every paper-mode method returns and the one shared
:func:`apply_plan` that carries it out (in the spirit of ToMe's ``bipartite_soft_matching`` → ``merge_wavg``).

Separating the decision from its application means every method merges with the same arithmetic, and
anything that wants to know *what* a reduction did (token-flow diagrams, statistics) reads the plan instead of
reverse-engineering the compacted state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from tor_exp.reduction.state import TokenState, gather_tokens

STREAMS = ("hidden", "residual")


@dataclass(frozen=True)
class ReductionPlan:
    """What a method decided at one location for every row of a batch (indices into the planned state).

    keep:           [B, N] bool, tokens that survive, in their current order; the two streams always lose
                    the same tokens (padding is dropped from the count whatever ``keep`` says there).
    src:            [B, M] long, merge slots: a removed token that joins ``dst`` on at least one stream
                    (slots used by neither stream are padding and may hold any index).
    dst:            [B, M] long, the surviving token slot m's source joins.
    merge_hidden:   [B, M] bool, slot m is merged into ``dst`` on the hidden stream; a removed token with no
                    merged slot on a stream is pruned from that stream (UTRC's per-stream hybrid).
    merge_residual: [B, M] bool, the same on the residual stream (``sizes`` follow this stream).
    weights:        [B, N] float or None, weight of every token in a merged mean (destination and sources):
                    ``None`` is the plain mean (the paper's ``(a + f)/2``), ``state.sizes`` is ToMe's
                    size-weighted mean, EViT passes its importance scores.
    """

    keep: Tensor
    src: Tensor
    dst: Tensor
    merge_hidden: Tensor
    merge_residual: Tensor
    weights: Optional[Tensor] = None

    @classmethod
    def pruning(cls, keep: Tensor) -> "ReductionPlan":
        """A plan that only drops tokens (no merge slots, so applying it skips the mean arithmetic)."""
        none = keep.new_zeros(keep.shape[0], 0)
        index = torch.zeros(keep.shape[0], 0, dtype=torch.long, device=keep.device)
        return cls(keep, index, index, none, none)

    def merged(self, stream: str) -> Tensor:
        """[B, M] bool merge flags of ``stream`` ("hidden" | "residual")."""
        if stream not in STREAMS:
            raise ValueError(f"stream={stream!r}: must be one of {', '.join(STREAMS)}")
        return self.merge_hidden if stream == "hidden" else self.merge_residual

    def destinations(self, stream: str) -> Tensor:
        """[B, N] long: the token each token is merged into on ``stream``, -1 if it is not merged there
        (survivor, or removed and pruned from that stream)."""
        merged = self.merged(stream)
        # +1 / -1 so a scatter_add of zeros from padding slots (index 0) leaves every other entry alone
        out = torch.zeros(self.keep.shape, dtype=torch.long, device=self.keep.device)
        return out.scatter_add(1, self.src, (self.dst + 1) * merged.long()) - 1

    def check(self, state: TokenState) -> None:
        """Raise ValueError unless this plan is well formed for ``state`` (a test/debug aid: it synchronises).

        Removed tokens and destinations are reducible; a merged source is removed and merged at most once per
        stream; a destination survives (so there are no merge chains); weights are finite and non-negative.
        """
        shape = tuple(state.positions.shape)
        slots = tuple(self.src.shape)
        if tuple(self.keep.shape) != shape or any(tuple(t.shape) != slots for t in
                                                  (self.dst, self.merge_hidden, self.merge_residual)):
            raise ValueError(f"plan shapes do not match the state {shape} / each other")
        reducible = state.reducible & state.valid
        if bool((state.valid & ~self.keep & ~reducible).any()):
            raise ValueError("plan removes an unreducible token")
        used = self.merge_hidden | self.merge_residual
        if bool((used & (self.keep.gather(1, self.src) | ~reducible.gather(1, self.src))).any()):
            raise ValueError("plan merges a token that survives or is unreducible")
        if bool((used & (~self.keep.gather(1, self.dst) | ~reducible.gather(1, self.dst))).any()):
            raise ValueError("plan merges into a token that is removed or unreducible")
        for stream in STREAMS:
            counts = torch.zeros(shape, dtype=torch.long, device=self.src.device)
            if bool((counts.scatter_add(1, self.src, self.merged(stream).long()) > 1).any()):
                raise ValueError(f"plan merges a token twice on the {stream} stream")
        if self.weights is not None and not bool((torch.isfinite(self.weights) & (self.weights >= 0)).all()):
            raise ValueError("plan weights must be finite and non-negative")


def _merge_stream(x: Tensor, weight: Tensor, src: Tensor, dst: Tensor, merge: Tensor) -> Tensor:
    """dst ← (w_dst·x_dst + Σ w_src·x_src) / (w_dst + Σ w_src) over the sources flagged in ``merge``."""
    xf = x.float()
    w_src = weight.gather(1, src) * merge.to(weight.dtype)
    contrib = gather_tokens(xf, src) * w_src[..., None]
    num = torch.zeros_like(xf).scatter_add(1, dst[..., None].expand_as(contrib), contrib)
    den = torch.zeros_like(weight).scatter_add(1, dst, w_src)
    received = den > 0
    merged = (xf * weight[..., None] + num) / (weight + den).clamp(min=1e-12)[..., None]
    return torch.where(received[..., None], merged, xf).to(x.dtype)


def apply_plan(state: TokenState, plan: Optional[ReductionPlan]) -> TokenState:
    """Carry out ``plan`` on ``state``: merge per stream, then compact (``None`` returns ``state`` itself).

    Each destination becomes the weighted mean of itself and the sources merged into it on that stream; a
    removed token not merged on a stream is simply dropped there. ``sizes`` (original tokens per token) and the
    state's other ``streams`` follow the residual stream. Survivors keep their order and positions (:meth:`TokenState.keep`).
    """
    if plan is None:
        return state
    if plan.src.shape[1] > 0:
        weights = (plan.weights if plan.weights is not None else state.valid).float()
        hidden = _merge_stream(state.hidden, weights, plan.src, plan.dst, plan.merge_hidden)
        residual = _merge_stream(state.residual, weights, plan.src, plan.dst, plan.merge_residual)
        sizes = state.sizes.float()
        sizes = sizes.scatter_add(1, plan.dst, sizes.gather(1, plan.src) * plan.merge_residual.float())
        streams = {name: _merge_stream(t, weights, plan.src, plan.dst, plan.merge_residual)
                   for name, t in state.streams.items()}
        state = state.replace(hidden=hidden, residual=residual, sizes=sizes.to(state.sizes.dtype), streams=streams)
    return state.keep(plan.keep)[0]
