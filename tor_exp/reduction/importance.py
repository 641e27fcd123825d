"""Shared tensor helpers for every reduction method: importance, masked ranking, matching, merging.

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

from tor_exp.errors import ConfigError
from tor_exp.reduction.base import IMPORTANCE_METRICS
from tor_exp.reduction.state import TokenState

NORM_EPS = 1e-6


# --------------------------------------------------------------------------------------------- importance
def token_importance(y: Tensor, metric: str = "clip") -> Tensor:
    """Per-token importance S [B, N] (float32) from features y [B, N, D] (METHOD.md §1, paper eq. 5).

    ``clip`` mean_d max(0, y_d) | ``unclipped`` mean_d y_d | ``l1`` mean_d |y_d| | ``l2`` sqrt(sum_d y_d²).
    Computed in float32 so half-precision models rank the same way as fp32 ones up to input rounding.
    """
    y = y.float()
    if metric == "clip":
        return y.clamp(min=0).mean(dim=-1)
    if metric == "unclipped":
        return y.mean(dim=-1)
    if metric == "l1":
        return y.abs().mean(dim=-1)
    if metric == "l2":
        return y.pow(2).sum(dim=-1).sqrt()
    raise ConfigError(f"reduction.metric={metric!r}: must be one of {', '.join(IMPORTANCE_METRICS)}")


def get_feature(features: dict[str, Tensor], source: str, key: str, state: TokenState | None = None) -> Tensor:
    """``features[source]``; ``mixer_out``/``residual`` fall back to the state's streams (they are the same
    tensors); anything else missing is a one-line error naming the config key that asked for it."""
    value = features.get(source) if features else None
    if value is not None:
        return value
    if state is not None and source == "mixer_out":
        return state.hidden
    if state is not None and source == "residual":
        return state.residual
    available = ", ".join(sorted(k for k, v in (features or {}).items() if v is not None)) or "none"
    raise ConfigError(
        f"reduction.{key}={source!r}: the model adapter did not provide '{source}' features (available: {available})"
    )


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


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, *] gathered along the token axis with idx [B, M] → [B, M, *]."""
    view = idx.view(idx.shape + (1,) * (x.dim() - 2)).expand(idx.shape + x.shape[2:])
    return torch.gather(x, 1, view)


def scatter_tokens(base: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    """Out-of-place ``base[b, idx[b, m]] = values[b, m]`` (idx must not repeat within a row)."""
    view = idx.view(idx.shape + (1,) * (base.dim() - 2)).expand(idx.shape + base.shape[2:])
    return base.scatter(1, view, values)


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


def retain_most_similar(g: Tensor, a_valid: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the r[b] connections with the largest g per row (ties: lower slot). Returns (kept, g_rank)."""
    order = masked_argsort(g, a_valid & torch.isfinite(g), descending=True)
    g_rank = ranks(order)
    return (g_rank < r[:, None]) & a_valid & torch.isfinite(g), g_rank


# --------------------------------------------------------------------------------------------- apply
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


def apply_reduction(
    state: TokenState,
    src: Tensor,
    src_valid: Tensor,
    dst: Tensor,
    merge_hidden: Tensor,
    merge_residual: Tensor,
    size_weighted: bool = False,
    weights: Tensor | None = None,
    extra: dict[str, Tensor] | None = None,
) -> tuple[TokenState, dict[str, Tensor]]:
    """Remove the tokens ``src[src_valid]``, merging each into ``dst`` per stream, and compact the rows.

    src, dst, src_valid, merge_hidden, merge_residual: [B, M] (token indices into the state; invalid slots
    may hold any index). A source with merge_* False is pruned from that stream (its destination unchanged);
    with True it joins its destination's mean. Sources and destinations must be disjoint (no chains).
    Weights of the mean: ``weights`` if given, else ``state.sizes`` when ``size_weighted`` (ToMe style),
    else 1 for every token (the paper's ``(a + f)/2`` generalised to several sources).
    ``sizes`` is the residual stream's count (sizes of residual-merged sources are added to their
    destination); the hidden stream's own count after this location comes back as
    ``extra["hidden_sizes"]`` (the next block recomputes the hidden stream from the summed stream, so it is
    not carried in the state). Survivors keep their original order (TokenState.keep).
    """
    src_valid = src_valid.bool()
    if weights is None:
        weights = state.sizes.float() if size_weighted else state.valid.float()
    weights = weights.float()
    m_hidden = src_valid & merge_hidden.bool()
    m_residual = src_valid & merge_residual.bool()
    hidden = _merge_stream(state.hidden, weights, src, dst, m_hidden)
    residual = _merge_stream(state.residual, weights, src, dst, m_residual)
    sizes = state.sizes.float()
    src_sizes = sizes.gather(1, src)
    new_sizes = sizes.scatter_add(1, dst, src_sizes * m_residual.float())
    hidden_sizes = sizes.scatter_add(1, dst, src_sizes * m_hidden.float())
    removed = torch.zeros_like(state.positions).scatter_add(1, src, src_valid.long()) > 0
    carried = {"hidden_sizes": hidden_sizes}
    carried.update(extra or {})
    new_state = state.replace(hidden=hidden, residual=residual, sizes=new_sizes.to(state.sizes.dtype))
    return new_state.keep(~removed, extra=carried)
