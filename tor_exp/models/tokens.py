"""Per-row token index helpers shared by the backbone loop, its backends and the entry points: padding may sit on
either side of a row, so "the last token" is always found from the validity mask, never from the width."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """``x`` [B, N, ...] at the token indices ``idx`` [B, K] → [B, K, ...]."""
    return torch.gather(x, 1, idx.view(idx.shape + (1,) * (x.dim() - 2)).expand(idx.shape + x.shape[2:]))


def right_align_order(valid: Tensor) -> Tensor:
    """[B, N] permutation that moves every row's real tokens to the end (in order): a left-padded layout."""
    return torch.sort(valid.to(torch.int8), dim=1, stable=True).indices


def last_index(valid: Tensor, k: int = 1) -> Tensor:
    """[B, k] columns of each row's last ``k`` real tokens, in order, whatever the padding side."""
    return right_align_order(valid)[:, -k:]


def protect_last(valid: Tensor, k: int = 1, protected: Optional[Tensor] = None) -> Tensor:
    """``protected`` plus each row's last ``k`` real tokens (they predict what comes next, so they must survive
    as themselves: a generation prefill, last-token logits)."""
    last = torch.zeros_like(valid, dtype=torch.bool).scatter_(1, last_index(valid, k), True) & valid.bool()
    return last if protected is None else (protected.bool() | last)


def gather_last(x: Tensor, valid: Tensor, k: int = 1) -> Tensor:
    """``x`` [B, N, ...] at each row's last ``k`` real tokens → [B, k, ...]."""
    return gather_tokens(x, last_index(valid, k))
