"""The one token-state type every reduction method transforms.

A reduction never touches model code: it receives a :class:`TokenState` (the two streams of a block plus the
bookkeeping that lets evaluation map outputs back to original positions) and returns a shorter one.
Rows of a batch may keep different numbers of tokens; shorter rows are right-padded and marked invalid and
unreducible, so padding can never be ranked, matched or merged.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, *] gathered along the token axis with idx [B, M] → [B, M, *]."""
    view = idx.view(idx.shape + (1,) * (x.dim() - 2)).expand(idx.shape + x.shape[2:])
    return torch.gather(x, 1, view)


@dataclass
class TokenState:
    """Tokens of a batch between two blocks.

    hidden:    [B, N, D] the hidden stream (the block's mixer output).
    residual:  [B, N, D] the residual stream (the running sum the next block adds ``hidden`` to).
    positions: [B, N] long, original index of each surviving token (a merged token keeps its destination's).
    sizes:     [B, N] float, how many original tokens each token stands for (follows the residual stream).
    reducible: [B, N] bool, False for padding and protected tokens: they are never sources or destinations.
    valid:     [B, N] bool, False for padding (the attention mask of the shortened sequence).
    streams:   name → [B, N, *], other streams that carry tokens between blocks and follow the same plan as the
               residual stream (Zamba2's embedding stream, which its shared block reads at every use).
    """

    hidden: Tensor
    residual: Tensor
    positions: Tensor
    sizes: Tensor
    reducible: Tensor
    valid: Tensor
    streams: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def initial(
        cls,
        hidden: Tensor,
        residual: Tensor,
        valid: Tensor | None = None,
        protected: Tensor | None = None,
        streams: dict[str, Tensor] | None = None,
    ) -> "TokenState":
        """State of a fresh batch: positions 0..N-1, size 1, padding and protected tokens unreducible."""
        batch, length = hidden.shape[:2]
        device = hidden.device
        if valid is None:
            valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        valid = valid.bool()
        reducible = valid.clone()
        if protected is not None:
            reducible &= ~protected.bool()
        positions = torch.arange(length, device=device).expand(batch, length).clone()
        positions = positions.masked_fill(~valid, -1)
        sizes = valid.to(torch.float32)
        return cls(hidden, residual, positions, sizes, reducible, valid, dict(streams or {}))

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def length(self) -> int:
        return self.hidden.shape[1]

    def num_reducible(self) -> Tensor:
        """[B] count of reducible tokens per row."""
        return self.reducible.sum(dim=1)

    def num_valid(self) -> Tensor:
        """[B] count of real (non-padding) tokens per row."""
        return self.valid.sum(dim=1)

    def replace(self, **changes: Tensor) -> "TokenState":
        return replace(self, **changes)

    def keep(self, keep_mask: Tensor, extra: dict[str, Tensor] | None = None) -> tuple["TokenState", dict[str, Tensor]]:
        """Drop every token where ``keep_mask`` is False, keep survivors in their current (original) order.

        Invalid tokens are always dropped from the count but may remain as right padding. Returns the
        compacted state and the compacted ``extra`` tensors (any [B, N, ...] tensors to carry along, e.g.
        per-stream sizes). Vectorised: a stable sort moves kept tokens to the front of each row.
        """
        keep_mask = keep_mask & self.valid
        counts = keep_mask.sum(dim=1)
        new_len = int(counts.max().item()) if counts.numel() else 0
        # Stable sort on "not kept" puts kept tokens first while preserving their order.
        order = torch.sort((~keep_mask).to(torch.int8), dim=1, stable=True).indices[:, :new_len]
        new_valid = torch.arange(new_len, device=keep_mask.device)[None, :] < counts[:, None]

        def take_masked(t: Tensor, fill) -> Tensor:
            out = gather_tokens(t, order)
            mask = new_valid.view(new_valid.shape + (1,) * (out.dim() - 2))
            return out.masked_fill(~mask, fill) if out.dtype != torch.bool else out & mask

        state = TokenState(
            hidden=take_masked(self.hidden, 0.0),
            residual=take_masked(self.residual, 0.0),
            positions=take_masked(self.positions, -1),
            sizes=take_masked(self.sizes, 0.0),
            reducible=take_masked(self.reducible, False),
            valid=new_valid,
            streams={name: take_masked(t, 0.0) for name, t in self.streams.items()},
        )
        carried = {k: take_masked(v, 0 if v.dtype != torch.bool else False) for k, v in (extra or {}).items()}
        return state, carried
