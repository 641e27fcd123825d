"""The analytic FLOP model of SSM, hybrid and other recurrent LMs (METHOD.md §4), summed over layer parts.

Conventions: FLOPs count a multiply-add as 2. A model is a :class:`~tor_exp.models.shape.ModelShape`: layers of
parts (a Mamba or Mamba-2 mixer, attention, MLP, MoE, ...), each of which states its own FLOP terms
(:meth:`~tor_exp.models.shape.Part.terms`); this module only sums them. When every layer has the same linear parts
(a pure SSM model) the backbone FLOPs reduction is ``1 − mean_l(tokens entering layer l)/N``; otherwise the layers
differ and attention is quadratic in its tokens, so the reduction is FLOP-weighted at a sequence length.

Terms are split into matmul-like ones (what ``FlopCounterMode`` sees: linear layers, the depthwise conv, the
scan's C·h products, the SSD einsums and attention's two products; each part's ``matmul_terms``) and element-wise
ones (discretisation, gates, norms, softmax), which are reported but cannot be checked against the counter.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

from tor_exp.errors import ConfigError
from tor_exp.models.shape import PART_KINDS, ModelShape

__all__ = ["ModelShape", "layer_flop_terms", "layer_flops", "layer_cost", "chunk_size", "model_flops",
           "flops_reduction", "kept_lengths_reduction", "realised_flops_reduction", "padded_flops_reduction"]


def all_matmul_terms() -> frozenset[str]:
    """Every registered part's matmul-like terms."""
    return frozenset().union(*(cls.matmul_terms for cls in PART_KINDS.values()))


def layer_flop_terms(shape: ModelShape, seq_len: int, reference: bool = False, layer: int = 0) -> dict[str, float]:
    """FLOPs of layer ``layer`` (each part with its pre-norm) on one sequence of ``seq_len`` tokens, by term."""
    terms: dict[str, float] = {}
    for part in shape.parts(layer):
        for key, value in part.terms(shape.d_model, seq_len, reference).items():
            terms[key] = terms.get(key, 0.0) + value
    return terms


def matmul_terms(shape: ModelShape, layer: int) -> frozenset[str]:
    """The terms of ``layer`` that ``torch.utils.flop_counter.FlopCounterMode`` counts."""
    return frozenset().union(*(p.matmul_terms for p in shape.parts(layer)))


def layer_flops(shape: ModelShape, seq_len: int, matmul_only: bool = False, reference: bool = False,
                layer: int = 0) -> float:
    terms = layer_flop_terms(shape, seq_len, reference, layer)
    counted = matmul_terms(shape, layer) if matmul_only else None
    return float(sum(v for key, v in terms.items() if counted is None or key in counted))


def layer_cost(shape: ModelShape, layer: int) -> tuple[float, float]:
    """(a, b) with the ideal FLOPs of ``layer`` on n tokens = a·n + b·n² (b > 0 only for attention)."""
    one, two = layer_flops(shape, 1, layer=layer), layer_flops(shape, 2, layer=layer)
    b = (two - 2.0 * one) / 2.0
    return one - b, b


def chunk_size(shape: ModelShape) -> int:
    """The chunk the model's scans work in (:attr:`ModelShape.chunk`), 0 when no part scans in chunks."""
    return shape.chunk


def padded_length(n: float | Tensor, chunk: int) -> float | Tensor:
    """``n`` rounded up to a whole number of chunks (``n`` itself without chunking)."""
    if chunk <= 0:
        return n
    if isinstance(n, Tensor):
        return torch.ceil(n / chunk) * chunk
    return math.ceil(n / chunk) * chunk


def layer_padded_cost(shape: ModelShape, layer: int) -> tuple[float, float, list[tuple[float, int]]]:
    """(a, b, [(c, chunk), ...]): the FLOPs of ``layer`` on n tokens when its scans work in whole chunks (HF's
    torch path and mamba_ssm's kernels pad every sequence to a chunk multiple) = a·n + b·n² + Σ c·padded_length(n,
    chunk): c is a chunked part's per-token cost of its padded terms, a the rest of the linear cost."""
    a, b = layer_cost(shape, layer)
    padded = []
    for part in shape.parts(layer):
        if part.chunk:
            c = sum(v for key, v in part.terms(shape.d_model, 1).items() if key in part.padded_terms)
            padded.append((c, part.chunk))
            a -= c
    return a, b, padded


def head_flop_terms(shape: ModelShape, n_tokens: int, n_logits: int) -> dict[str, float]:
    """Final norm over the surviving tokens + LM head over the positions whose logits are computed."""
    return {"norm_f": 4.0 * n_tokens * shape.d_model, "lm_head": 2.0 * n_logits * shape.d_model * shape.vocab_size}


def model_flops(
    shape: ModelShape, tokens_per_layer: Sequence[int], n_logits: int, matmul_only: bool = False,
    reference: bool = False,
) -> float:
    """FLOPs of one sequence whose layer l sees ``tokens_per_layer[l]`` tokens (embedding lookups cost 0)."""
    backbone = sum(layer_flops(shape, int(n), matmul_only, reference, layer=l) for l, n in enumerate(tokens_per_layer))
    head = head_flop_terms(shape, int(tokens_per_layer[-1]), n_logits)
    return backbone + (head["lm_head"] if matmul_only else sum(head.values()))


# ------------------------------------------------------------------------------------ a schedule's FLOPs
def tokens_fraction_per_layer(n_layer: int, locations: Iterable[int], keep_ratio: float) -> list[float]:
    """Fraction of the input tokens entering each layer: ρ^(number of locations l < layer)."""
    locs = sorted(locations)
    return [keep_ratio ** sum(1 for l in locs if l < layer) for layer in range(n_layer)]


#: sequence length at which a hybrid's (length-dependent) FLOPs reduction is solved when none is given
DEFAULT_SEQ_LEN = 1024


def _check_scope(scope: str, shape: Optional[ModelShape]) -> None:
    if scope not in ("backbone", "total"):
        raise ConfigError(f"reduction.flops_scope={scope!r}: must be one of backbone, total")
    if scope == "total" and shape is None:
        raise ConfigError(
            "reduction.flops_scope=total: needs the model shape; pass shape=model_shape(model) to build_schedule "
            "once the model is loaded"
        )


def kept_lengths_reduction(shape: Optional[ModelShape], n_layer: int, locations: Sequence[int],
                           kept: Sequence[float], seq_len: float, scope: str = "backbone",
                           logits: str = "all") -> float:
    """The FLOPs reduction of a schedule whose ``i``-th location (sorted) leaves ``kept[i]`` of ``seq_len`` tokens.

    The one formula behind the ρ solver (:func:`flops_reduction`) and chunk alignment: ``backbone`` on a uniform
    model (or without a shape) is the token average; otherwise each layer's ``a·n + b·n²`` (:func:`layer_cost`) at
    its tokens; ``total`` adds the final norm and the LM head (``logits`` all or last).
    """
    _check_scope(scope, shape)
    lengths = [seq_len, *kept]
    locs = sorted(locations)
    tokens = [lengths[sum(1 for l in locs if l < layer)] for layer in range(n_layer)]
    if scope == "backbone" and (shape is None or shape.uniform):
        return 1.0 - sum(tokens) / (n_layer * seq_len)
    costs = [layer_cost(shape, l) for l in range(n_layer)]
    full = sum(a * seq_len + b * seq_len * seq_len for a, b in costs)
    reduced = sum(a * n + b * n * n for (a, b), n in zip(costs, tokens))
    if scope == "total":
        head = head_flop_terms(shape, 1, 1)
        full += head["norm_f"] * seq_len + head["lm_head"] * (seq_len if logits == "all" else 1)
        reduced += head["norm_f"] * tokens[-1] + head["lm_head"] * (tokens[-1] if logits == "all" else 1)
    return 1.0 - reduced / full


def flops_reduction(
    n_layer: int,
    locations: Sequence[int],
    keep_ratio: float,
    scope: str = "backbone",
    shape: Optional[ModelShape] = None,
    seq_len: Optional[int] = None,
    logits: str = "all",
) -> float:
    """Continuous FLOPs reduction of a schedule with the same ρ at every location (what the ρ solver inverts).

    ``backbone``: for a uniform model the token average ``1 − mean_l ρ^k(l)`` (independent of the length); otherwise
    the FLOP-weighted reduction at ``seq_len`` (default :data:`DEFAULT_SEQ_LEN`). ``total`` adds the final norm and
    the LM head (``logits`` all or last) and needs ``shape``. :func:`kept_lengths_reduction` at ρ^k·N.
    """
    _check_scope(scope, shape)
    # the token average is length-free: at a length of 1 the kept "lengths" are the fractions ρ^k themselves
    n = 1.0 if scope == "backbone" and (shape is None or shape.uniform) else float(seq_len or DEFAULT_SEQ_LEN)
    kept = [keep_ratio ** (i + 1) * n for i in range(len(locations))]
    return kept_lengths_reduction(shape, n_layer, locations, kept, n, scope, logits)


def realised_flops_reduction(
    tokens_per_layer: Tensor | Sequence,
    n_input: Tensor | Sequence | int,
    shape: Optional[ModelShape] = None,
    logits: str = "all",
    n_logits: Optional[Tensor | Sequence] = None,
) -> dict[str, float]:
    """Measured reduction from real token counts, pooled over a batch (FLOPs-weighted).

    ``tokens_per_layer``: [B, L] (or [L]) counts entering each layer; ``n_input``: [B] unreduced lengths.
    Returns ``proxy`` (1 − mean_l n_l / N, the released code's layer-average proxy) and, with ``shape``,
    ``backbone`` (analytic layer FLOPs at the real lengths; attention's quadratic terms per row) and ``total``
    (+ final norm and LM head; with ``logits="last"`` one logit row per sequence either way, with ``"all"`` one
    per surviving token, or ``n_logits`` per row when given).
    """
    counts = torch.as_tensor(tokens_per_layer, dtype=torch.float64)
    if counts.dim() == 1:
        counts = counts[None]
    n_in = torch.as_tensor(n_input, dtype=torch.float64).reshape(-1).expand(counts.shape[0])
    n_layer = counts.shape[1]
    out = {"proxy": float(1.0 - counts.sum() / (n_in.sum() * n_layer)) if n_in.sum() > 0 else 0.0}
    if shape is None:
        return out
    head = head_flop_terms(shape, 1, 1)
    real = n_in > 0
    final = counts[:, -1]
    if n_logits is not None:
        m_full = m_red = torch.as_tensor(n_logits, dtype=torch.float64).reshape(-1).expand(counts.shape[0])
    elif logits == "all":
        m_full, m_red = n_in, final
    else:
        m_full = m_red = torch.ones_like(n_in)
    full_rows = backbone_flops_rows(shape, n_in[:, None].expand(-1, n_layer))
    red_rows = backbone_flops_rows(shape, counts)
    full_bb = float(full_rows[real].sum())
    red_bb = float(red_rows[real].sum())
    full_tot = full_bb + float((head["norm_f"] * n_in + head["lm_head"] * m_full)[real].sum())
    red_tot = red_bb + float((head["norm_f"] * final + head["lm_head"] * m_red)[real].sum())
    out["backbone"] = 1.0 - red_bb / full_bb if full_bb else 0.0
    out["total"] = 1.0 - red_tot / full_tot if full_tot else 0.0
    chunk = chunk_size(shape)
    if chunk:
        out["backbone_padded"] = padded_flops_reduction(counts, n_in, shape)
    return out


def backbone_flops_rows(shape: ModelShape, counts: Tensor) -> Tensor:
    """[B] ideal backbone FLOPs of each row whose layer l sees ``counts[b, l]`` tokens ([B, L] float64)."""
    if shape.uniform:  # every layer costs the same, linearly in its tokens (tested): one product per row
        return layer_flops(shape, 1) * counts.sum(dim=1)
    a, b = (torch.tensor(c, dtype=torch.float64) for c in zip(*(layer_cost(shape, l) for l in range(counts.shape[1]))))
    return (counts * a).sum(dim=1) + (counts * counts * b).sum(dim=1)


def padded_work(shape: ModelShape, widths: Sequence[float] | Tensor, batch: int = 1) -> float:
    """Backbone FLOPs a chunked scan really performs on a batch whose layer l is ``widths[l]`` tokens wide: every
    row is computed at the batch's width, and each chunked scan on whole chunks (:func:`layer_padded_cost`)."""
    total = 0.0
    for layer, width in enumerate(torch.as_tensor(widths, dtype=torch.float64).tolist()):
        a, b, padded = layer_padded_cost(shape, layer)
        total += batch * (a * width + b * width * width + sum(c * float(padded_length(width, chunk))
                                                              for c, chunk in padded))
    return total


def padded_flops_reduction(tokens_per_layer: Tensor | Sequence, n_input: Tensor | Sequence | int,
                           shape: ModelShape) -> float:
    """The backbone FLOPs reduction a chunk-padding backend realises: the batch's width at each layer (its longest
    row) against the unreduced width, both padded to whole chunks in the scan. Lower than the token figure when
    reduced lengths stop just past a chunk boundary."""
    counts = torch.as_tensor(tokens_per_layer, dtype=torch.float64)
    if counts.dim() == 1:
        counts = counts[None]
    n_in = torch.as_tensor(n_input, dtype=torch.float64).reshape(-1).expand(counts.shape[0])
    batch, n_layer = counts.shape
    full = padded_work(shape, [float(n_in.max())] * n_layer, batch)
    reduced = padded_work(shape, counts.max(dim=0).values, batch)
    return 1.0 - reduced / full if full else 0.0
