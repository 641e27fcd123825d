"""Ranking, bipartite / best matching and retention: the batched building blocks methods decide with.

Everything here is batched over rows that may hold different numbers of reducible tokens. The rules that
make a row's result independent of the rest of the batch:

* unreducible tokens (padding, protected) are moved behind every reducible token before any ranking, so they
  are never ranked, matched, merged, pruned or used as destinations;
* every sort is stable, so ties break by current position (lower position first) and never by what other
  rows contain;
* cosine similarity normalises with a floor on the norm, so an all-zero token has similarity 0 (never NaN).
"""
from __future__ import annotations

import torch
from torch import Tensor

from tor_exp.reduction.state import gather_tokens

NORM_EPS = 1e-6


# --------------------------------------------------------------------------------------------- ranking
def masked_argsort(scores: Tensor, mask: Tensor, descending: bool = False) -> Tensor:
    """Order [B, N] that sorts ``scores`` among ``mask``-ed tokens and puts every other token last.

    Two stable sorts (by score, then by "not in mask") so ties keep the lower position first and so a token
    outside the mask can never come before one inside it, even when a real score is ±inf. NaN scores
    count as the least important (ascending: first; descending: last among the masked ones).
    """
    s = torch.nan_to_num(scores.float(), nan=float("-inf"))
    order = torch.sort(s, dim=1, descending=descending, stable=True).indices
    in_mask = mask.gather(1, order)
    second = torch.sort((~in_mask).to(torch.int8), dim=1, stable=True).indices
    return order.gather(1, second)


def ranks(order: Tensor) -> Tensor:
    """Inverse permutation: rank[b, order[b, i]] = i."""
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return rank


def compact_indices(mask: Tensor, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Indices of the True entries of each row in position order, right-padded to ``width``.

    Returns (idx [B, W] long, valid [B, W] bool); padded slots hold index 0 and valid False.
    """
    count = mask.sum(dim=1)
    if width is None:
        width = int(count.max().item()) if count.numel() else 0
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    if width > mask.shape[1]:
        order = torch.cat([order, order.new_zeros(order.shape[0], width - mask.shape[1])], dim=1)
    idx = order[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < count[:, None]
    return idx.masked_fill(~valid, 0), valid


def scatter_mask(idx: Tensor, valid: Tensor, length: int) -> Tensor:
    """Bool [B, length], True at ``idx[valid]``: the inverse of :func:`compact_indices`.

    A count is scattered (not the bool itself) because padded slots repeat index 0 and ``scatter`` with
    repeated indices keeps an unspecified one of the written values.
    """
    counts = torch.zeros(idx.shape[0], length, dtype=torch.long, device=idx.device)
    return counts.scatter_add(1, idx, valid.long()) > 0


def take_smallest(key: Tensor, mask: Tensor, count: Tensor) -> Tensor:
    """Bool [B, M]: per row the ``count[b]`` entries of ``mask`` with the smallest key (ties: lower slot)."""
    order = masked_argsort(key, mask)
    return (ranks(order) < count[:, None]) & mask


def floor_fraction(q: float, r: Tensor) -> Tensor:
    """⌊q·r⌋ per row, with an epsilon so 0.29·100 = 28.999… still floors to 29."""
    return torch.floor(q * r.to(torch.float64) + 1e-9).to(torch.long)


# --------------------------------------------------------------------------------------------- similarity
def normalise(x: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Unit vectors along the last dim in float32; an all-zero token stays zero instead of NaN."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise cosine similarity [B, Na, Nb] between a [B, Na, D] and b [B, Nb, D]; no NaN for zeros."""
    return normalise(a) @ normalise(b).transpose(-1, -2)


# --------------------------------------------------------------------------------------------- matching
def alternate_sets(mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(a_idx, a_valid, b_idx, b_valid): the ``mask``-ed tokens in position order split even/odd (A/B).

    ToMe's bipartite split for tokens that have no importance order (PuMer, LTMP's merging half).
    """
    idx, valid = compact_indices(mask)
    return idx[:, 0::2], valid[:, 0::2], idx[:, 1::2], valid[:, 1::2]


def best_match(
    features: Tensor, a_idx: Tensor, a_valid: Tensor, b_idx: Tensor, b_valid: Tensor
) -> tuple[Tensor, Tensor]:
    """Connect every a to its most similar b (paper eqs. 6-7) over valid b only.

    Returns (g [B, MA] float32: max cosine, -inf for invalid a or when a row has no valid b;
    dst [B, MA] long: the chosen b's token index). Ties pick the first maximal b in ``b_idx`` order
    (torch.max returns the first maximal index).
    """
    batch, width_a = a_idx.shape
    if width_a == 0 or b_idx.shape[1] == 0:
        return (
            torch.full((batch, width_a), float("-inf"), device=a_idx.device),
            torch.zeros(batch, width_a, dtype=torch.long, device=a_idx.device),
        )
    sim = cosine_similarity(gather_tokens(features, a_idx), gather_tokens(features, b_idx))
    sim = sim.masked_fill(~b_valid[:, None, :], float("-inf"))
    g, j = sim.max(dim=-1)
    g = g.masked_fill(~a_valid, float("-inf"))
    return g, b_idx.gather(1, j)


# --------------------------------------------------------------------------------------------- retention
def retain_most_similar(g: Tensor, a_valid: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the r[b] connections with the largest g per row (ties: lower slot). Returns (kept, g_rank)."""
    order = masked_argsort(g, a_valid & torch.isfinite(g), descending=True)
    g_rank = ranks(order)
    return (g_rank < r[:, None]) & a_valid & torch.isfinite(g), g_rank
