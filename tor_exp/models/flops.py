"""The analytic FLOP model of SSM and hybrid SSM–attention LMs (METHOD.md §4).

Conventions: FLOPs count a multiply-add as 2. A layer is a list of *parts* — ``ssm`` (a Mamba or Mamba-2
mixer), ``attention``, ``mlp``, ``moe``, ``linear`` (Zamba2's projection of its shared block) — each with its
pre-norm. A pure SSM model has one ``ssm`` part per layer and every layer costs the same per token, so the backbone
FLOPs reduction is ``1 − mean_l(tokens entering layer l)/N``; in a hybrid the layers differ and attention is
quadratic in its tokens, so the reduction is FLOP-weighted at a sequence length.

Terms are split into matmul-like ones (what ``FlopCounterMode`` sees: linear layers, the depthwise conv, the
scan's C·h products, the SSD einsums and attention's two products) and element-wise ones (discretisation, gates,
norms, softmax), which are reported but cannot be checked against the counter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

from tor_exp.errors import ConfigError

#: terms of :func:`layer_flop_terms` that ``torch.utils.flop_counter.FlopCounterMode`` counts.
MATMUL_TERMS = frozenset({
    "in_proj", "conv1d", "x_proj", "dt_proj", "scan_out", "out_proj",
    "ssd_scores", "ssd_intra", "ssd_chunk_states", "ssd_inter_chunk", "ssd_state_out",
    "attn_qkv", "attn_scores", "attn_values", "attn_out", "mlp_in", "mlp_out", "moe_router", "moe_experts",
    "moe_shared", "linear", "attn_adapters", "mlp_adapters",
})
#: the parts a layer can have
PARTS = ("ssm", "attention", "mlp", "moe", "linear")


@dataclass(frozen=True)
class ModelShape:
    """The dimensions the FLOPs depend on (a model adapter reads them from the HF config).

    ``family`` is the SSM mixer kind (``mamba`` | ``mamba2``). ``layers`` lists each layer's parts; empty means
    every layer is one SSM mixer (Mamba, Mamba-2). Attention: ``attn_heads`` query heads and ``attn_kv_heads``
    key/value heads of ``attn_head_dim``, reading ``attn_width`` features (0 = d_model; Zamba2's shared block
    reads 2·d_model). MLP: ``mlp_size`` hidden units, ``mlp_gated`` for a gated (SwiGLU-style) up projection;
    MoE: ``moe_top_k`` of ``moe_experts`` experts of ``moe_size`` plus a shared expert of ``moe_shared_size``.
    Low-rank adapters of rank ``attn_adapter_rank`` on each of q, k, v (attn_width → r → attn_width) and of rank
    ``mlp_adapter_rank`` on the MLP's up projection (Zamba2's per-use LoRA on its shared block; 0 = none).
    """

    family: str
    d_model: int
    n_layer: int
    vocab_size: int
    state_size: int
    expand: int = 2
    conv_kernel: int = 4
    dt_rank: int = 0          # Mamba-1
    head_dim: int = 64        # Mamba-2
    n_groups: int = 1         # Mamba-2
    chunk_size: int = 256     # Mamba-2
    ssm_heads: int = 0        # Mamba-2 heads when not expand·d_model/head_dim (0 = derived)
    layers: tuple[tuple[str, ...], ...] = ()
    attn_heads: int = 0
    attn_kv_heads: int = 0
    attn_head_dim: int = 0
    attn_width: int = 0
    mlp_size: int = 0
    mlp_gated: bool = False
    mlp_width: int = 0        # input width of the MLP (0 = d_model; Zamba2's shared MLP reads d_model too)
    moe_experts: int = 0
    moe_top_k: int = 0
    moe_size: int = 0
    moe_shared_size: int = 0
    attn_adapter_rank: int = 0
    mlp_adapter_rank: int = 0

    def __post_init__(self) -> None:
        if self.layers and len(self.layers) != self.n_layer:
            raise ValueError(f"ModelShape: {len(self.layers)} layer part lists for {self.n_layer} layers")
        unknown = {p for parts in self.layers for p in parts} - set(PARTS)
        if unknown:
            raise ValueError(f"ModelShape: unknown layer parts {sorted(unknown)}")

    @property
    def d_inner(self) -> int:
        return self.ssm_heads * self.head_dim if self.ssm_heads else self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.ssm_heads or self.d_inner // self.head_dim

    @property
    def uniform(self) -> bool:
        """Every layer is the same single SSM mixer (cost per token equal and constant across layers)."""
        return not self.layers or all(parts == ("ssm",) for parts in self.layers)

    def parts(self, layer: int) -> tuple[str, ...]:
        return self.layers[layer] if self.layers else ("ssm",)

    def ssm_layers(self) -> list[int]:
        """Layers that hold an SSM mixer (whose output y can rank tokens)."""
        return [l for l in range(self.n_layer) if "ssm" in self.parts(l)]


def _ssm_terms(shape: ModelShape, seq_len: int, reference: bool) -> dict[str, float]:
    """One SSM mixer with its pre-norm. Mamba-2 SSD terms: by default the ideal chunked algorithm, linear in
    ``seq_len``; ``reference=True`` counts what HF's torch reference computes instead (whole zero-padded chunks and
    an inter-chunk recurrence quadratic in the number of chunks) — what ``FlopCounterMode`` measures on CPU.
    The SSD terms (``ssd_*``) are the ones chunking pads: see :func:`layer_cost`."""
    n, d, e, s = float(seq_len), shape.d_model, shape.d_inner, shape.state_size
    k = shape.conv_kernel
    t: dict[str, float] = {"block_norm": 4.0 * n * d}
    if shape.family == "mamba":
        r = shape.dt_rank or math.ceil(d / 16)
        t["in_proj"] = 2.0 * n * d * 2 * e
        t["conv1d"] = 2.0 * n * e * k
        t["x_proj"] = 2.0 * n * e * (r + 2 * s)
        t["dt_proj"] = 2.0 * n * r * e
        t["scan_out"] = 2.0 * n * e * s                      # y_t = C_t · h_t
        t["scan_update"] = 6.0 * n * e * s                   # exp(dt·A), dt·B·u, h·dA + dBu
        t["gate_skip"] = 6.0 * n * e                         # softplus(dt), D·u, silu(z)·y
        t["out_proj"] = 2.0 * n * e * d
        return t
    h, p, g, q = shape.n_heads, shape.head_dim, shape.n_groups, shape.chunk_size
    if reference:
        chunks = float(math.ceil(seq_len / q)) if seq_len > 0 else 0.0
        padded = chunks * q
        inter = 2.0 * (chunks + 1) ** 2 * h * p * s
    else:
        padded, chunks = n, n / q
        inter = 2.0 * chunks * h * p * s
    conv_dim = e + 2 * g * s
    t["in_proj"] = 2.0 * n * d * (2 * e + 2 * g * s + h)
    t["conv1d"] = 2.0 * n * conv_dim * k
    t["ssd_scores"] = 2.0 * padded * q * h * s               # C·Bᵀ inside each chunk
    t["ssd_intra"] = 2.0 * padded * q * h * p                # (scores ∘ decay) · x
    t["ssd_chunk_states"] = 2.0 * padded * h * p * s         # Σ_l B_l x_l per chunk
    t["ssd_inter_chunk"] = inter                             # chunk-state recurrence
    t["ssd_state_out"] = 2.0 * padded * h * p * s            # C · chunk start state
    t["ssd_elementwise"] = padded * (q * h * 3 + h * p * 4)  # segsum, decays, dt·x, D skip
    t["gated_norm"] = 7.0 * n * e
    t["out_proj"] = 2.0 * n * e * d
    return t


def _attention_terms(shape: ModelShape, seq_len: int) -> dict[str, float]:
    """Self-attention with its pre-norm; the score and value products are the dense n×n ones the kernels compute
    (quadratic in the tokens the layer sees, which is why reducing before attention gains more than linearly)."""
    n, d = float(seq_len), shape.d_model
    w = shape.attn_width or d
    h, kv, dh = shape.attn_heads, shape.attn_kv_heads or shape.attn_heads, shape.attn_head_dim
    terms = {
        "attn_norm": 4.0 * n * w,
        "attn_qkv": 2.0 * n * w * (h + 2 * kv) * dh,
        "attn_scores": 2.0 * n * n * h * dh,
        "attn_softmax": 5.0 * n * n * h,
        "attn_values": 2.0 * n * n * h * dh,
        "attn_out": 2.0 * n * h * dh * d,
    }
    if shape.attn_adapter_rank:  # q, k, v each + up(down(x)), and the three additions
        r = shape.attn_adapter_rank
        terms["attn_adapters"] = 3 * (2.0 * n * w * r + 2.0 * n * r * w)
        terms["attn_adapter_add"] = 3.0 * n * w
    return terms


def _mlp_terms(shape: ModelShape, seq_len: int, size: int, prefix: str = "mlp") -> dict[str, float]:
    n, w = float(seq_len), shape.mlp_width or shape.d_model
    up = 2 if shape.mlp_gated else 1
    terms = {f"{prefix}_norm": 4.0 * n * w, f"{prefix}_in": 2.0 * n * w * up * size,
             f"{prefix}_act": float(up + 1) * n * size, f"{prefix}_out": 2.0 * n * size * shape.d_model}
    if shape.mlp_adapter_rank:  # the up projection + up(down(x)), and the addition
        r = shape.mlp_adapter_rank
        terms[f"{prefix}_adapters"] = 2.0 * n * w * r + 2.0 * n * r * up * size
        terms[f"{prefix}_adapter_add"] = float(up) * n * size
    return terms


def _moe_terms(shape: ModelShape, seq_len: int) -> dict[str, float]:
    """Active FLOPs of a mixture-of-experts MLP: the router, ``moe_top_k`` experts per token, the shared expert."""
    n, d = float(seq_len), shape.d_model
    up = 2 if shape.mlp_gated else 1
    expert = 2.0 * d * up * shape.moe_size + 2.0 * shape.moe_size * d + (up + 1) * shape.moe_size
    shared = 2.0 * d * up * shape.moe_shared_size + 2.0 * shape.moe_shared_size * d + (up + 1) * shape.moe_shared_size
    return {"moe_norm": 4.0 * n * d, "moe_router": 2.0 * n * d * shape.moe_experts,
            "moe_experts": n * shape.moe_top_k * expert, "moe_shared": n * shared}


def layer_flop_terms(shape: ModelShape, seq_len: int, reference: bool = False, layer: int = 0) -> dict[str, float]:
    """FLOPs of layer ``layer`` (each part with its pre-norm) on one sequence of ``seq_len`` tokens, by term."""
    terms: dict[str, float] = {}
    for part in shape.parts(layer):
        if part == "ssm":
            new = _ssm_terms(shape, seq_len, reference)
        elif part == "attention":
            new = _attention_terms(shape, seq_len)
        elif part == "mlp":
            new = _mlp_terms(shape, seq_len, shape.mlp_size)
        elif part == "moe":
            new = _moe_terms(shape, seq_len)
        else:  # linear: Zamba2's projection of its shared block's output
            new = {"linear": 2.0 * float(seq_len) * shape.d_model * shape.d_model}
        for key, value in new.items():
            terms[key] = terms.get(key, 0.0) + value
    return terms


def layer_flops(shape: ModelShape, seq_len: int, matmul_only: bool = False, reference: bool = False,
                layer: int = 0) -> float:
    terms = layer_flop_terms(shape, seq_len, reference, layer)
    return float(sum(v for key, v in terms.items() if not matmul_only or key in MATMUL_TERMS))


def layer_cost(shape: ModelShape, layer: int) -> tuple[float, float]:
    """(a, b) with the ideal FLOPs of ``layer`` on n tokens = a·n + b·n² (b > 0 only for attention)."""
    one, two = layer_flops(shape, 1, layer=layer), layer_flops(shape, 2, layer=layer)
    b = (two - 2.0 * one) / 2.0
    return one - b, b


def chunk_size(shape: ModelShape) -> int:
    """The chunk the SSD scan works in (Mamba-2 mixers), 0 when no layer scans in chunks (Mamba-1)."""
    return shape.chunk_size if shape.family == "mamba2" and shape.ssm_layers() else 0


def padded_length(n: float | Tensor, chunk: int) -> float | Tensor:
    """``n`` rounded up to a whole number of chunks (``n`` itself without chunking)."""
    if chunk <= 0:
        return n
    if isinstance(n, Tensor):
        return torch.ceil(n / chunk) * chunk
    return math.ceil(n / chunk) * chunk


def layer_padded_cost(shape: ModelShape, layer: int) -> tuple[float, float, float]:
    """(a, b, c): the FLOPs of ``layer`` on n tokens when its scan works in whole chunks (HF's torch path and
    mamba_ssm's kernels pad every sequence to a chunk multiple) = a·n + b·n² + c·padded_length(n): c is the SSD
    scan's per-token cost, a the rest of the linear cost."""
    a, b = layer_cost(shape, layer)
    c = 0.0
    if "ssm" in shape.parts(layer) and shape.family == "mamba2":
        c = sum(v for key, v in _ssm_terms(shape, 1, reference=False).items() if key.startswith("ssd_"))
    return a - c, b, c


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


def flops_reduction(
    n_layer: int,
    locations: Sequence[int],
    keep_ratio: float,
    scope: str = "backbone",
    shape: Optional[ModelShape] = None,
    seq_len: Optional[int] = None,
    logits: str = "all",
) -> float:
    """Continuous FLOPs reduction of a schedule (what the ρ solver inverts).

    ``backbone``: for a uniform model the token average ``1 − mean_l ρ^k(l)`` (independent of the length); for a
    hybrid the FLOP-weighted reduction at ``seq_len`` (default :data:`DEFAULT_SEQ_LEN`). ``total`` adds the final
    norm and the LM head (``logits`` all or last) and needs ``shape``.
    """
    frac = tokens_fraction_per_layer(n_layer, locations, keep_ratio)
    if scope not in ("backbone", "total"):
        raise ConfigError(f"reduction.flops_scope={scope!r}: must be one of backbone, total")
    if scope == "backbone" and (shape is None or shape.uniform):
        return 1.0 - sum(frac) / n_layer
    if shape is None:
        raise ConfigError(
            "reduction.flops_scope=total: needs the model shape; pass shape=model_shape(model) to build_schedule "
            "once the model is loaded"
        )
    n = float(seq_len or DEFAULT_SEQ_LEN)
    costs = [layer_cost(shape, l) for l in range(n_layer)]
    full = sum(a * n + b * n * n for a, b in costs)
    reduced = sum(a * n * f + b * (n * f) ** 2 for (a, b), f in zip(costs, frac))
    if scope == "total":
        head = head_flop_terms(shape, 1, 1)
        norm_tok, lm_tok = head["norm_f"], head["lm_head"]
        if shape.uniform:  # the historical closed form (bit-identical ρ for the pure SSM models)
            per_token_layer = layer_flops(shape, int(n)) / n
            full = n_layer * per_token_layer * n
            reduced = per_token_layer * n * sum(frac)
        full = full + norm_tok * n + lm_tok * (n if logits == "all" else 1)
        reduced = reduced + norm_tok * n * frac[-1]
        reduced += lm_tok * (n * frac[-1] if logits == "all" else 1)
    return 1.0 - reduced / full


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
    row is computed at the batch's width, and each SSM scan on whole chunks (:func:`layer_padded_cost`)."""
    chunk = chunk_size(shape)
    total = 0.0
    for layer, width in enumerate(torch.as_tensor(widths, dtype=torch.float64).tolist()):
        a, b, c = layer_padded_cost(shape, layer)
        total += batch * (a * width + b * width * width + c * float(padded_length(width, chunk)))
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
