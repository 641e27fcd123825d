"""Analytic FLOPs of Mamba / Mamba-2, the reduction schedule, and ρ solved from a FLOPs target.

Conventions (METHOD.md §0, §4): "reduce after block l" — blocks l+1 … see the shorter sequence; the same keep
ratio ρ at every location, so after k locations ρ^k·N tokens remain (continuous, no ceil, when solving).
``f`` is defined on backbone FLOPs at the input length unless ``scope="total"``; since every layer of a model
costs the same per token, backbone f = 1 − mean_l(tokens entering layer l)/N.

FLOPs count a multiply-add as 2. Terms are split into matmul-like ones (what ``FlopCounterMode`` sees:
linear layers, the depthwise conv, the scan's C·h products and the SSD einsums) and element-wise ones
(discretisation, gates, norms), which are reported but cannot be checked against the counter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import Tensor

from tor_exp.errors import ConfigError

#: terms of :func:`layer_flop_terms` that ``torch.utils.flop_counter.FlopCounterMode`` counts.
MATMUL_TERMS = frozenset({
    "in_proj", "conv1d", "x_proj", "dt_proj", "scan_out", "out_proj",
    "ssd_scores", "ssd_intra", "ssd_chunk_states", "ssd_inter_chunk", "ssd_state_out",
})


@dataclass(frozen=True)
class ModelShape:
    """The dimensions the FLOPs depend on (read from a HF config or a :class:`ModelConfig`'s tiny shape)."""

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

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.head_dim

    @classmethod
    def from_hf_config(cls, config: Any) -> "ModelShape":
        family = "mamba2" if getattr(config, "model_type", "") == "mamba2" else "mamba"
        return cls(
            family=family, d_model=config.hidden_size, n_layer=config.num_hidden_layers,
            vocab_size=config.vocab_size, state_size=config.state_size, expand=int(config.expand),
            conv_kernel=config.conv_kernel, dt_rank=int(getattr(config, "time_step_rank", 0) or 0),
            head_dim=int(getattr(config, "head_dim", 64)), n_groups=int(getattr(config, "n_groups", 1)),
            chunk_size=int(getattr(config, "chunk_size", 256)),
        )

    @classmethod
    def from_model_config(cls, cfg: Any) -> "ModelShape":
        """Shape of a ``source: tiny`` model config (other sources need the loaded HF config)."""
        from tor_exp.models.loading import tiny_hf_config

        return cls.from_hf_config(tiny_hf_config(cfg))


def layer_flop_terms(shape: ModelShape, seq_len: int, reference: bool = False) -> dict[str, float]:
    """FLOPs of one block (pre-norm + mixer) on one sequence of ``seq_len`` tokens, by term.

    Mamba-2 SSD terms: by default the ideal chunked algorithm, linear in ``seq_len`` (intra-chunk products
    over chunks of ``chunk_size``, a linear pass over chunk states), so every layer costs the same per token.
    ``reference=True`` counts what HF's torch reference computes instead (whole zero-padded chunks and an
    inter-chunk recurrence quadratic in the number of chunks) — what ``FlopCounterMode`` measures on CPU.
    """
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


def layer_flops(shape: ModelShape, seq_len: int, matmul_only: bool = False, reference: bool = False) -> float:
    terms = layer_flop_terms(shape, seq_len, reference)
    return float(sum(v for key, v in terms.items() if not matmul_only or key in MATMUL_TERMS))


def head_flop_terms(shape: ModelShape, n_tokens: int, n_logits: int) -> dict[str, float]:
    """Final norm over the surviving tokens + LM head over the positions whose logits are computed."""
    return {"norm_f": 4.0 * n_tokens * shape.d_model, "lm_head": 2.0 * n_logits * shape.d_model * shape.vocab_size}


def model_flops(
    shape: ModelShape, tokens_per_layer: Sequence[int], n_logits: int, matmul_only: bool = False,
    reference: bool = False,
) -> float:
    """FLOPs of one sequence whose layer l sees ``tokens_per_layer[l]`` tokens (embedding lookups cost 0)."""
    backbone = sum(layer_flops(shape, int(n), matmul_only, reference) for n in tokens_per_layer)
    head = head_flop_terms(shape, int(tokens_per_layer[-1]), n_logits)
    return backbone + (head["lm_head"] if matmul_only else sum(head.values()))


# ---------------------------------------------------------------------------------------------- schedule
def tokens_fraction_per_layer(n_layer: int, locations: Iterable[int], keep_ratio: float) -> list[float]:
    """Fraction of the input tokens entering each layer: ρ^(number of locations l < layer)."""
    locs = sorted(locations)
    return [keep_ratio ** sum(1 for l in locs if l < layer) for layer in range(n_layer)]


def flops_reduction(
    n_layer: int,
    locations: Sequence[int],
    keep_ratio: float,
    scope: str = "backbone",
    shape: Optional[ModelShape] = None,
    seq_len: Optional[int] = None,
    logits: str = "all",
) -> float:
    """Continuous FLOPs reduction of a schedule (what :func:`solve_keep_ratio` inverts)."""
    frac = tokens_fraction_per_layer(n_layer, locations, keep_ratio)
    if scope == "backbone":
        return 1.0 - sum(frac) / n_layer
    if scope != "total":
        raise ConfigError(f"reduction.flops_scope={scope!r}: must be one of backbone, total")
    if shape is None:
        raise ConfigError(
            "reduction.flops_scope=total: needs the model shape; pass "
            "shape=ModelShape.from_hf_config(model.config) to build_schedule once the model is loaded"
        )
    n = int(seq_len or 1024)
    per_token_layer = layer_flops(shape, n) / n
    head = head_flop_terms(shape, 1, 1)
    norm_tok, lm_tok = head["norm_f"], head["lm_head"]
    full = n_layer * per_token_layer * n + norm_tok * n + lm_tok * (n if logits == "all" else 1)
    reduced = per_token_layer * n * sum(frac) + norm_tok * n * frac[-1]
    reduced += lm_tok * (n * frac[-1] if logits == "all" else 1)
    return 1.0 - reduced / full


def solve_keep_ratio(
    n_layer: int,
    locations: Sequence[int],
    target_flops: float,
    scope: str = "backbone",
    shape: Optional[ModelShape] = None,
    seq_len: Optional[int] = None,
    logits: str = "all",
    tol: float = 1e-10,
) -> float:
    """ρ in (0, 1] whose schedule removes ``target_flops`` of the FLOPs (bisection; f is monotone in ρ)."""
    if not 0.0 <= target_flops < 1.0:
        raise ConfigError(f"reduction.target_flops={target_flops!r}: must be in [0, 1)")
    if target_flops == 0.0 or not locations:
        if target_flops > 0.0:
            raise ConfigError(f"reduction.target_flops={target_flops}: no reduction locations to reach it")
        return 1.0
    f = lambda rho: flops_reduction(n_layer, locations, rho, scope, shape, seq_len, logits)  # noqa: E731
    best = f(1e-12)
    if target_flops > best:
        raise ConfigError(
            f"reduction.target_flops={target_flops}: above the {best:.4f} reachable with locations {list(locations)}"
        )
    lo, hi = 1e-12, 1.0  # f(lo) >= target >= f(hi) = 0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if f(mid) >= target_flops:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


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
    ``backbone`` (analytic layer FLOPs at the real lengths) and ``total`` (+ final norm and LM head; with
    ``logits="last"`` one logit row per sequence either way, with ``"all"`` one per surviving token, or
    ``n_logits`` per row when given).
    """
    counts = torch.as_tensor(tokens_per_layer, dtype=torch.float64)
    if counts.dim() == 1:
        counts = counts[None]
    n_in = torch.as_tensor(n_input, dtype=torch.float64).reshape(-1).expand(counts.shape[0])
    n_layer = counts.shape[1]
    out = {"proxy": float(1.0 - counts.sum() / (n_in.sum() * n_layer)) if n_in.sum() > 0 else 0.0}
    if shape is None:
        return out
    # The ideal per-layer cost is linear in the token count (tested), so whole-batch sums suffice.
    per_token = layer_flops(shape, 1)
    head = head_flop_terms(shape, 1, 1)
    real = n_in > 0
    final = counts[:, -1]
    if n_logits is not None:
        m_full = m_red = torch.as_tensor(n_logits, dtype=torch.float64).reshape(-1).expand(counts.shape[0])
    elif logits == "all":
        m_full, m_red = n_in, final
    else:
        m_full = m_red = torch.ones_like(n_in)
    full_bb = float((per_token * n_layer * n_in)[real].sum())
    red_bb = float((per_token * counts.sum(dim=1))[real].sum())
    full_tot = full_bb + float((head["norm_f"] * n_in + head["lm_head"] * m_full)[real].sum())
    red_tot = red_bb + float((head["norm_f"] * final + head["lm_head"] * m_red)[real].sum())
    out["backbone"] = 1.0 - red_bb / full_bb if full_bb else 0.0
    out["total"] = 1.0 - red_tot / full_tot if full_tot else 0.0
    return out


@dataclass
class Schedule:
    """Where to reduce ("after block l") and how much (the same ρ at every location)."""

    locations: list[int] = field(default_factory=list)
    keep_ratio: float = 1.0
    target_flops: Optional[float] = None


def resolve_locations(reduction_cfg: Any, model_cfg: Any) -> list[int]:
    """Explicit list, or start/stride/stop (stop defaults to the depth), or the model's paper default."""
    n_layer = int(model_cfg.n_layer)
    locs = getattr(reduction_cfg, "locations", None)
    start = getattr(reduction_cfg, "location_start", None)
    if locs is not None:
        locs = [int(l) for l in locs]
        key = "reduction.locations"
    elif start is not None:
        stride = getattr(reduction_cfg, "location_stride", None) or 1
        stop = getattr(reduction_cfg, "location_stop", None)
        stop = n_layer - 1 if stop is None else int(stop)
        if stride <= 0:
            raise ConfigError(f"reduction.location_stride={stride!r}: must be > 0")
        locs = list(range(int(start), stop, int(stride)))
        key = "reduction.location_start"
    else:
        locs = [int(l) for l in model_cfg.locations]
        key = "model.locations"
    bad = [l for l in locs if l < 0 or l > n_layer - 2]
    if bad:
        raise ConfigError(f"{key}={locs}: locations {bad} outside [0, {n_layer - 2}] for a {n_layer}-layer model")
    if len(set(locs)) != len(locs):
        raise ConfigError(f"{key}={locs}: duplicate locations")
    return sorted(locs)


def shape_from_model_config(model_cfg: Any) -> Optional[ModelShape]:
    """The model shape without loading weights: tiny configs, local directories, or a hub config.json that is
    already in the local HF cache (never downloads). None when unknown."""
    import json
    import os

    from tor_exp.models.loading import hf_config_from_mamba_ssm, resolve_path

    if getattr(model_cfg, "source", None) == "tiny":
        return ModelShape.from_model_config(model_cfg)
    path = resolve_path(model_cfg.path) if getattr(model_cfg, "path", None) else None
    if not path:
        return None
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
        except Exception:  # noqa: BLE001 - an unusable id simply means "unknown"
            cached = None
        if not isinstance(cached, str):
            return None
        cfg_file = cached
    with open(cfg_file) as fh:
        raw = json.load(fh)
    if "d_model" in raw:  # mamba_ssm layout
        return ModelShape.from_hf_config(hf_config_from_mamba_ssm(raw, model_cfg.family))
    from transformers import AutoConfig

    return ModelShape.from_hf_config(AutoConfig.from_pretrained(os.path.dirname(cfg_file)))


def build_schedule(
    reduction_cfg: Any,
    model_cfg: Any,
    seq_len: Optional[int] = None,
    shape: Optional[ModelShape] = None,
    logits: str = "all",
) -> Schedule:
    """Locations + ρ for a run: ``keep_ratio`` if given, else solved from ``target_flops``, else 1 (no-op).

    ``scope: total`` needs ``shape`` (from the loaded model, ``ModelShape.from_hf_config(model.config)``);
    tiny model configs provide it themselves.
    """
    locations = resolve_locations(reduction_cfg, model_cfg)
    if getattr(reduction_cfg, "method", None) == "none":
        return Schedule(locations=locations, keep_ratio=1.0, target_flops=0.0)
    rho = getattr(reduction_cfg, "keep_ratio", None)
    target = getattr(reduction_cfg, "target_flops", None)
    if rho is not None:
        if not 0.0 < rho <= 1.0:
            raise ConfigError(f"reduction.keep_ratio={rho!r}: must be in (0, 1]")
        return Schedule(locations=locations, keep_ratio=float(rho), target_flops=target)
    if target is None:
        return Schedule(locations=locations, keep_ratio=1.0, target_flops=None)
    scope = getattr(reduction_cfg, "flops_scope", "backbone")
    if scope == "total" and shape is None:
        shape = shape_from_model_config(model_cfg)
    rho = solve_keep_ratio(int(model_cfg.n_layer), locations, float(target), scope, shape, seq_len, logits)
    return Schedule(locations=locations, keep_ratio=rho, target_flops=float(target))
