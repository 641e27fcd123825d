"""The one scorer: (context, continuation) token pairs → packed batch → continuation log-likelihoods.

Pure tensor code, no model: :func:`pack` builds the right-padded batch lm-eval's causal recipe describes
(input = (context + continuation)[:-1]), :func:`protected_mask` says which positions no reduction may touch, and
:func:`score_continuations` reads the log-likelihood of every continuation from a (possibly reduced) output, by
the alignment rule of METHOD.md §5:

* ``exact``: logits are gathered at the *original* position that predicts each continuation token (every scored
  token is predicted from its true predecessor); those positions were protected, so they must all survive.
* ``offset``: the released evaluation's rule — lm-eval's slice ``[ctx_len − contlen : ctx_len]`` of each row's
  surviving logits with ``ctx_len = inplen − removed``. A row whose slice is shorter than its continuation scores
  log-likelihood 0 and counts as greedy-correct (as the released code does); such rows are flagged ``short``, and
  full-length slices that read logits from other positions than ``exact`` would are flagged ``misaligned``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ALIGNMENT_RULES = ("exact", "offset")


@dataclass
class PackedBatch:
    """Right-padded scoring batch. ``valid`` [B, W] marks real tokens; continuations [B, C] are 0-padded."""

    input_ids: Tensor
    valid: Tensor
    input_lengths: Tensor
    continuation_lengths: Tensor
    continuations: Tensor

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def target_positions(self) -> Tensor:
        """[B, C] original position whose logits predict continuation token k."""
        k = torch.arange(self.continuations.shape[1], device=self.input_ids.device)
        return (self.input_lengths - self.continuation_lengths)[:, None] + k[None, :]

    def continuation_mask(self) -> Tensor:
        """[B, C] True where continuation token k exists."""
        k = torch.arange(self.continuations.shape[1], device=self.input_ids.device)
        return k[None, :] < self.continuation_lengths[:, None]


@dataclass
class Scores:
    """Per row: summed continuation log-likelihood, greedy-exact flag, and the offset rule's flags (``empty``:
    nothing of the row survived)."""

    logprob: Tensor
    greedy: Tensor
    short: Tensor
    misaligned: Tensor
    empty: Tensor


def pack(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_length: int, pad_id: int,
         device: torch.device | str = "cpu") -> PackedBatch:
    """Token pairs → one right-padded batch; the input keeps the last ``max_length`` tokens of context +
    continuation (minus the final token, which is only predicted)."""
    inputs, conts = [], []
    for ctx, cont in pairs:
        if not ctx or not cont:
            raise ValueError("loglikelihood requests need non-empty context and continuation tokens")
        if len(cont) > max_length:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length={max_length}")
        inputs.append(list((list(ctx) + list(cont))[-(max_length + 1):-1]))
        conts.append(list(cont))
    inplen = torch.tensor([len(x) for x in inputs], device=device)
    contlen = torch.tensor([len(c) for c in conts], device=device)
    width, cmax = int(inplen.max()), int(contlen.max())
    input_ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    continuations = torch.zeros((len(conts), cmax), dtype=torch.long)
    for i, (x, c) in enumerate(zip(inputs, conts)):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        continuations[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    valid = torch.arange(width, device=device)[None, :] < inplen[:, None]
    return PackedBatch(input_ids.to(device), valid, inplen, contlen, continuations.to(device))


def protected_mask(batch: PackedBatch, alignment: str, *, score_all: bool = False) -> Tensor:
    """[B, W] positions no reduction may touch: everything (rolling windows score every position), the scored
    positions and padding (exact), or padding only (offset; padding is unreducible anyway)."""
    if score_all:
        return torch.ones_like(batch.valid)
    if alignment == "exact":
        col = torch.arange(batch.width, device=batch.valid.device)
        return col[None, :] >= (batch.input_lengths - batch.continuation_lengths)[:, None]
    return ~batch.valid


def score_continuations(logits: Tensor, positions: Tensor, valid: Tensor, batch: PackedBatch,
                        alignment: str) -> Scores:
    """Continuation scores of ``batch`` from an output whose row j holds original position ``positions[:, j]``.

    ``logits`` [B, N', V], ``positions`` [B, N'] (-1 at padding), ``valid`` [B, N'].
    """
    dev = logits.device
    positions, valid = positions.to(dev), valid.to(dev).bool() & (positions.to(dev) >= 0)
    b, n_out = positions.shape
    width = batch.width
    cmask, targets = batch.continuation_mask().to(dev), batch.target_positions().to(dev)
    contlen = batch.continuation_lengths.to(dev)
    # where each original position ended up in the output (-1 = removed or merged away)
    where = torch.full((b, width + 1), -1, dtype=torch.long, device=dev)
    source = torch.arange(n_out, device=dev).expand(b, n_out)
    where.scatter_(1, torch.where(valid, positions, torch.full_like(positions, width)), source)
    exact_idx = where[:, :width].gather(1, targets.clamp(max=width - 1))

    n_valid = valid.sum(1)
    short = torch.zeros(b, dtype=torch.bool, device=dev)
    if alignment == "exact":
        if bool(((exact_idx < 0) & cmask).any()):
            raise RuntimeError("a reduction removed a protected (scored) position")
        idx = exact_idx
    elif alignment == "offset":
        short = n_valid < contlen
        # survivors are compacted in order, so a row's j-th valid output is output index j
        idx = (n_valid - contlen)[:, None] + torch.arange(cmask.shape[1], device=dev)[None, :]
    else:
        raise ValueError(f"alignment={alignment!r}: must be one of {', '.join(ALIGNMENT_RULES)}")
    idx = torch.where(cmask & ~short[:, None], idx, torch.zeros_like(idx)).clamp(min=0, max=n_out - 1)
    rows = torch.arange(b, device=dev)[:, None]
    picked = F.log_softmax(logits[rows, idx].float(), dim=-1)  # [B, C, V]
    conts = batch.continuations.to(dev)
    token_lp = picked.gather(2, conts[..., None]).squeeze(-1)
    logprob = torch.where(short, torch.zeros(b, device=dev), (token_lp * cmask).sum(1))
    greedy = ((picked.argmax(-1) == conts) | ~cmask).all(1) | short
    misaligned = ((idx != exact_idx) & cmask).any(1) & ~short
    return Scores(logprob, greedy, short, misaligned, n_valid == 0)
