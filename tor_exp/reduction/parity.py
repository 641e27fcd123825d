"""Parity mode: the behaviour of the authors' released implementation (METHOD.md §6), op for op.

Used to explain the published numbers; registered under the names the method spec gives the parity mode
(``reduction=utrc_official | evit_official | pumer_official``); the
paper-mode methods (``utrc``, ``evit``, ``pumer``) are what the paper *describes*. Written from the behaviour
spelled out in METHOD.md §6, not from the released code. Conventions of the released code kept here:

* the unit is one request, as the released evaluation scores it alone (batch size 1): every real token of a row
  is reducible (``TokenState.reducible``/protected tokens are ignored, scored ones included) and N = the row's
  current real length, ``num_keep = math.ceil(N * ρ)`` (Python float, no epsilon),
  ``r = min(N − num_keep, N // 2)`` for the bipartite methods; r ≤ 0 ⇒ the row is unchanged;
* metric X = the block's mixer output (d_model), detached; ``clip`` ⇒ X = max(X, 0);
* Xn = X / ‖X‖₂ with no epsilon (an all-zero metric token gives NaN exactly as the released code would);
* sizes restart at 1 at every location: dst ← (dst + Σ contributions) / (1 + Σ size contributions).

The public plain-tensor functions (``parity_utrc``, ``parity_pumer``) keep the released code's semantics on the
tensor they are given: every row is a whole, unpadded sequence of the same length. The registered methods apply
them per request: padding never enters the metric, the sort or the matching, so a batched run gives each row its
batch-1 result. EViT has one implementation, :func:`parity_evit_rows` (per request, as the released evaluation
runs it at batch size 1; the released code's batched flatten / retry is never reached there).

Parity-ness is the config class's ``parity`` attribute (:class:`ParityConfig`); code that has only a method name
(reports reading results.json) asks :func:`is_parity` / :func:`paper_method`, which look the name up in the
registry.

Torch ops whose tie-breaking decides results (kept identical to the released code's choices so results match
on the same device and torch version): ``torch.sort(dim=tokens, descending=True)`` (default, not stable) for
the per-channel sort, ``Tensor.max(dim=-1)`` for node_max/node_idx, ``Tensor.argsort(descending=True)``
(default, not stable) for the edge order, ``Tensor.sort(dim=1)`` for src/unm, ``Tensor.topk(k, dim=1)`` for
``hybrid`` (values and the ones tensor [B, r, 1]), ``scatter_reduce(reduce="sum")`` (include_self) for sums,
and for EViT ``Tensor.sort(dim=1)`` ascending.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from tor_exp.reduction.base import ReductionConfig, ReductionMethod, check_choice, register_method, registered_methods
from tor_exp.reduction.state import TokenState

PARITY_METRICS = ("clip", "unclipped")
PARITY_STRATEGIES = ("prune", "merge", "hybrid")


# ---------------------------------------------------------------------------------------------- matching
def parity_removal(length: int, keep_ratio: float) -> int:
    """r = min(N − ceil(N·ρ), N // 2) with Python's float ceil (the released code's arithmetic)."""
    return min(length - math.ceil(length * keep_ratio), length // 2)


def _metric(metric_x: Tensor, clip: bool) -> Tensor:
    x = metric_x.detach()
    return x.clamp(min=0) if clip else x


def _edges(a: Tensor, b: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe edge selection: (unm_idx [B, Na−r], src_idx [B, r], dst_idx [B, r]).

    src and unm are sorted ascending; dst stays in edge (most-similar-first) order, so the j-th smallest
    source is paired with the destination of the j-th most similar edge (released behaviour).
    """
    scores = a @ b.transpose(-1, -2)
    node_max, node_idx = scores.max(dim=-1)
    edge = node_max.argsort(dim=-1, descending=True)
    unm_idx, src_idx = edge[:, r:], edge[:, :r]
    dst_idx = node_idx.gather(1, src_idx)
    return unm_idx.sort(dim=1).values, src_idx.sort(dim=1).values, dst_idx


def parity_match_sorted(xn: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """UTRC matching: each channel sorted independently over tokens (rows of Xs are not tokens),
    a = Xs[:, N//2:], b = Xs[:, :N//2]; a-row i is applied to position 2i, b-row j to position 2j+1."""
    xs = xn.sort(dim=1, descending=True).values
    mid = xs.shape[1] // 2
    return _edges(xs[:, mid:], xs[:, :mid], r)


def parity_match_tome(xn: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """PuMer/ToMe matching on the real tokens: a = even positions, b = odd positions."""
    return _edges(xn[:, ::2], xn[:, 1::2], r)


def parity_kept_index(length: int, unm_idx: Tensor) -> Tensor:
    """Positions that survive, ascending: unmerged evens (2i) and every odd position (2j+1)."""
    batch = unm_idx.shape[0]
    odd = torch.arange(1, length, 2, device=unm_idx.device).expand(batch, -1)
    return torch.cat([2 * unm_idx, odd], dim=1).sort(dim=1).values


def parity_apply(x: Tensor, unm_idx: Tensor, src_idx: Tensor, dst_idx: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Apply one strategy to a stream x [B, N, D]; returns (values [B, N−r, D] in original order,
    size_src [B, r]: the size each source contributed to its destination (1 or 0)).

    merge: full sources, size 1 each; prune: contributions 0, size 0; hybrid: k = r // 2, per channel keep
    the k largest signed source values (``topk(k, dim=1)`` over the source axis) and zero the rest, sizes by
    the same top-k rule on a ones tensor [B, r, 1].
    """
    batch, length, dim = x.shape
    r = src_idx.shape[1]
    evens, odds = x[:, ::2], x[:, 1::2]
    unm = evens.gather(1, unm_idx[..., None].expand(-1, -1, dim))
    src = evens.gather(1, src_idx[..., None].expand(-1, -1, dim))
    size_src = torch.ones(batch, r, 1, dtype=x.dtype, device=x.device)
    if mode == "prune":
        src = torch.zeros_like(src)
        size_src = torch.zeros_like(size_src)
    elif mode == "hybrid":
        k = r // 2
        value_mask = torch.zeros_like(src).scatter_(1, src.topk(k, dim=1).indices, 1)
        src = src * value_mask
        size_mask = torch.zeros_like(size_src).scatter_(1, size_src.topk(k, dim=1).indices, 1)
        size_src = size_src * size_mask
    elif mode != "merge":
        raise ValueError(f"unknown strategy {mode!r}")
    dst_sum = odds.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, dim), src, reduce="sum")
    dst_size = torch.ones(batch, odds.shape[1], 1, dtype=x.dtype, device=x.device).scatter_reduce(
        1, dst_idx[..., None], size_src, reduce="sum"
    )
    dst_new = dst_sum / dst_size
    out = torch.zeros_like(x)
    out[:, 1::2] = dst_new
    out.scatter_(1, (2 * unm_idx)[..., None].expand(-1, -1, dim), unm)
    kept = parity_kept_index(length, unm_idx)
    return out.gather(1, kept[..., None].expand(-1, -1, dim)), size_src[..., 0]


def _unchanged(hidden: Tensor, residual: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    batch, length = hidden.shape[:2]
    return hidden, residual, torch.arange(length, device=hidden.device).expand(batch, -1).clone()


# ---------------------------------------------------------------------------------------------- public API
def parity_utrc(
    hidden: Tensor,
    residual: Tensor,
    metric_x: Tensor,
    keep_ratio: float,
    hidden_mode: str = "hybrid",
    residual_mode: str = "merge",
    clip: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Released UTRC at one location → (hidden [B,N−r,D], residual [B,N−r,D], kept_index [B,N−r])."""
    hidden, residual, kept, _ = _parity_utrc(hidden, residual, metric_x, keep_ratio, hidden_mode, residual_mode, clip)
    return hidden, residual, kept


def _parity_utrc(hidden, residual, metric_x, keep_ratio, hidden_mode, residual_mode, clip, tome=False):
    length = hidden.shape[1]
    r = parity_removal(length, keep_ratio)
    if r <= 0:
        return (*_unchanged(hidden, residual), None)
    x = _metric(metric_x, clip)
    xn = x / x.norm(dim=-1, keepdim=True)
    unm_idx, src_idx, dst_idx = (parity_match_tome if tome else parity_match_sorted)(xn, r)
    new_hidden, _ = parity_apply(hidden, unm_idx, src_idx, dst_idx, hidden_mode)
    new_residual, size_src = parity_apply(residual, unm_idx, src_idx, dst_idx, residual_mode)
    return new_hidden, new_residual, parity_kept_index(length, unm_idx), (src_idx, dst_idx, size_src)


def parity_pumer(
    hidden: Tensor, residual: Tensor, metric_x: Tensor, keep_ratio: float, clip: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Released PuMer (ToMe bipartite on even/odd positions, full-vector average) at one location."""
    hidden, residual, kept, _ = _parity_utrc(hidden, residual, metric_x, keep_ratio, "merge", "merge", clip, tome=True)
    return hidden, residual, kept


# ---------------------------------------------------------------------------------------------- registered
@dataclass
class ParityConfig(ReductionConfig):
    """Shared parity-mode keys: released default ρ = 0.905 (≈ 29.8 % FLOPs at 64 layers) and ``metric``.

    ``parity`` marks the released-code modes (class attributes, not config keys); ``paper_method`` names the
    paper-mode method each reproduces (reports compare it with that method's published row)."""

    parity: ClassVar[bool] = True
    paper_method: ClassVar[str]

    target_flops: Optional[float] = None
    keep_ratio: Optional[float] = 0.905
    metric: str = "clip"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("reduction.metric", self.metric, PARITY_METRICS)


@dataclass
class UTRCParityConfig(ParityConfig):
    """Released UTRC: ``hidden`` (hybrid) and ``residual`` (merge) strategies ∈ prune | merge | hybrid."""

    paper_method: ClassVar[str] = "utrc"

    method: str = "utrc_official"
    hidden: str = "hybrid"
    residual: str = "merge"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("reduction.hidden", self.hidden, PARITY_STRATEGIES)
        check_choice("reduction.residual", self.residual, PARITY_STRATEGIES)


@dataclass
class EViTParityConfig(ParityConfig):
    paper_method: ClassVar[str] = "evit"

    method: str = "evit_official"


@dataclass
class PuMerParityConfig(ParityConfig):
    paper_method: ClassVar[str] = "pumer"

    method: str = "pumer_official"


# ---------------------------------------------------------------------------------------------- per request
def _real_first(valid: Tensor) -> Tensor:
    """[B, N] column order that puts each row's real tokens first, in order (whatever the padding side)."""
    return torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices


def _assemble(state: TokenState, rows: list[tuple[Tensor, dict[str, Tensor]]]) -> TokenState:
    """Right-padded state from per-group results ``(row indices [G], {field: [G, L', ...]})``; padding is
    invalid, unreducible, position −1, size 0 and zero-valued, as TokenState requires."""
    batch, device = state.batch_size, state.hidden.device
    width = max(int(fields["positions"].shape[1]) for _, fields in rows)
    out = {
        "hidden": state.hidden.new_zeros(batch, width, state.hidden.shape[-1]),
        "residual": state.residual.new_zeros(batch, width, state.residual.shape[-1]),
        "positions": torch.full((batch, width), -1, dtype=state.positions.dtype, device=device),
        "sizes": state.sizes.new_zeros(batch, width),
        "reducible": torch.zeros(batch, width, dtype=torch.bool, device=device),
        "valid": torch.zeros(batch, width, dtype=torch.bool, device=device),
    }
    for index, fields in rows:
        cols = torch.arange(fields["positions"].shape[1], device=device)
        for key, value in fields.items():
            out[key][index[:, None], cols[None, :]] = value
    return TokenState(**out)


class _ParityBipartite(ReductionMethod):
    """Released UTRC / PuMer applied to each request alone.

    Rows are grouped by real length and each group of equal-length rows is one call of the released ops on its
    real tokens only, so each row is reduced exactly as the released code reduces it at batch size 1 (same N,
    r, mid and even/odd sets, same op shapes). Padding the rows to a common width instead cannot give that
    result: the edge order is a non-stable ``argsort`` over ties (all-zero clipped metric rows score exactly
    0, an all-zero token makes every score NaN) and ``hybrid``'s size count is ``topk`` over a ones tensor —
    both tie-breaks depend on the length of the sorted axis. The loop is over distinct lengths (at most one
    per row), never over tokens; a batch of equal-length rows is a single call.
    """

    counts_from_ratio = False  # the released code computes its own counts from one ρ

    tome: bool = False

    @property
    def needed_features(self) -> set[str]:
        return {"mixer_out"}

    def _modes(self) -> tuple[str, str]:
        return "merge", "merge"

    def reduce(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float, location: int) -> TokenState:
        metric_x = features.get("mixer_out") if features else None
        metric_x = state.hidden if metric_x is None else metric_x
        lengths = state.valid.sum(dim=1)
        distinct = torch.unique(lengths).tolist()
        if all(parity_removal(n, keep_ratio) <= 0 for n in distinct):
            return state
        hidden_mode, residual_mode = self._modes()
        order = _real_first(state.valid)
        rows = []
        for length in distinct:
            index = (lengths == length).nonzero().squeeze(1)
            cols = order[index, :length]
            take = lambda t: t[index[:, None], cols]  # noqa: E731  [G, length, ...], real tokens only
            sizes = take(state.sizes)
            hidden, residual, kept, match = _parity_utrc(
                take(state.hidden), take(state.residual), take(metric_x), keep_ratio, hidden_mode, residual_mode,
                self.config.metric == "clip", tome=self.tome,
            )
            if match is not None:
                src_idx, dst_idx, size_src = match
                # bookkeeping only (the released values restart sizes at 1): residual-stream counts
                moved = sizes[:, ::2].gather(1, src_idx) * size_src.to(sizes.dtype)
                odd = sizes[:, 1::2].scatter_add(1, dst_idx, moved)
                sizes = sizes.clone()
                sizes[:, 1::2] = odd
            keep = lambda t: t.gather(1, kept)  # noqa: E731
            rows.append((index, {
                "hidden": hidden, "residual": residual, "positions": keep(take(state.positions)),
                "sizes": keep(sizes), "reducible": keep(take(state.reducible)),
                "valid": torch.ones_like(kept, dtype=torch.bool),
            }))
        return _assemble(state, rows)


@register_method("utrc_official", UTRCParityConfig)
class UTRCParity(_ParityBipartite):
    """Released UTRC (per-channel-sorted matching, even/odd application, sizes restart at 1)."""

    def _modes(self) -> tuple[str, str]:
        return self.config.hidden, self.config.residual


@register_method("pumer_official", PuMerParityConfig)
class PuMerParity(_ParityBipartite):
    """Released PuMer: ToMe bipartite on even/odd positions, full-vector average in both streams."""

    tome = True


def parity_evit_rows(metric_x: Tensor, valid: Tensor, keep_ratio: float, clip: bool = True) -> Tensor:
    """Keep mask [B, N] of the released EViT applied to each row alone (its real tokens, N = its length).

    At batch size 1 the released flatten / reshape never fails, so there is no retry: keep s ≤ key, key = the
    row's (num_keep)-th smallest score (ties at the key are all kept). Only sorted *values* are used, so no
    tie-break is involved and padding (sorted last as +inf, then masked out) cannot change a row's result.
    Rows with num_keep ≥ N keep everything.
    """
    s = _metric(metric_x, clip).sum(dim=-1)
    s = s.masked_fill(s == 0, float("-inf"))
    n = valid.sum(dim=1)
    num_keep = torch.ceil(n.to(torch.float64) * keep_ratio).to(torch.long)  # = math.ceil(N * ρ) in doubles
    reduces = num_keep < n
    key = s.masked_fill(~valid, float("inf")).sort(dim=1).values.gather(
        1, num_keep.clamp(max=max(s.shape[1] - 1, 0))[:, None])
    return valid & (~(s > key) | ~reduces[:, None])


@register_method("evit_official", EViTParityConfig)
class EViTParity(ReductionMethod):
    """Released EViT on each request alone: keeps the num_keep+1 *lowest*-scored tokens, no fusion."""

    counts_from_ratio = False  # the released code computes its own counts from one ρ

    @property
    def needed_features(self) -> set[str]:
        return {"mixer_out"}

    def reduce(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float, location: int) -> TokenState:
        metric_x = features.get("mixer_out") if features else None
        metric_x = state.hidden if metric_x is None else metric_x
        if state.length == 0:
            return state
        keep = parity_evit_rows(metric_x, state.valid, keep_ratio, self.config.metric == "clip")
        if bool((keep == state.valid).all()):
            return state
        return state.keep(keep)[0]


# ---------------------------------------------------------------------------------------------- by name
def is_parity(method: Optional[str]) -> bool:
    """Whether the registered method called ``method`` is a parity mode (its config class's ``parity``); False
    for None and for names no method is registered under (e.g. in an old results.json)."""
    config_cls = registered_methods().get(str(method), (ReductionConfig, None))[0]
    return bool(config_cls.parity)


def paper_method(method: str) -> str:
    """The paper-mode method a parity mode reproduces (``utrc_official`` → ``utrc``); any other name unchanged."""
    return registered_methods()[method][0].paper_method if is_parity(method) else method
