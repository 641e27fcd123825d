"""What a model is made of, layer by layer: the unit of model knowledge is the layer *part*, not the family.

A :class:`ModelShape` is a sequence of layers, each a tuple of parts (frozen dataclasses, each with its pre-norm):
a Mamba-1 or Mamba-2 mixer, attention, an MLP, a mixture of experts, Zamba2's linear projection, a linear-attention
/ delta-rule mixer (Gated DeltaNet, KDA) or a short convolution (LFM2). Each part answers, without any family name:

* :meth:`Part.terms`: its FLOPs at a length, by term (METHOD.md §4; multiply-add = 2), of which
  :attr:`Part.matmul_terms` are the ones ``torch.utils.flop_counter.FlopCounterMode`` counts and
  :attr:`Part.padded_terms` the ones a chunked scan computes on whole chunks;
* :attr:`Part.chunk`: the chunk its scan works in (0: none);
* :attr:`Part.ranks`: it yields a per-token output a method may rank tokens on (``importance_source: ssm_out``);
* :attr:`Part.quadratic`: its cost grows with the square of the tokens it sees (attention).

Locations, importance sources, chunk alignment and the FLOP model (:mod:`tor_exp.models.flops`) ask these and
nothing else. A new kind of layer is one new :class:`Part` subclass decorated with :func:`register_part`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

#: kind name → part class (every subclass registered with :func:`register_part`)
PART_KINDS: dict[str, type["Part"]] = {}


def register_part(cls: type["Part"]) -> type["Part"]:
    """Register a part class under its ``kind`` (a new layer kind = one new registered class)."""
    if not cls.kind or cls.kind in PART_KINDS:
        raise ValueError(f"part kind {cls.kind!r}: empty or registered twice")
    PART_KINDS[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class Part:
    """One computation of a layer with its pre-norm (see the module docstring for what a part answers)."""

    #: the registry name (``ModelShape.kinds``)
    kind: ClassVar[str] = ""
    #: yields a per-token output a method may rank on (the importance source ``ssm_out``)
    ranks: ClassVar[bool] = False
    #: its cost is quadratic in its tokens (attention)
    quadratic: ClassVar[bool] = False
    #: the terms of :meth:`terms` that ``FlopCounterMode`` counts (linear layers, convolutions, matmuls)
    matmul_terms: ClassVar[frozenset[str]] = frozenset()
    #: the terms a chunked scan computes on whole chunks (padded to :attr:`chunk` multiples)
    padded_terms: ClassVar[frozenset[str]] = frozenset()

    @property
    def chunk(self) -> int:
        """The chunk its scan works in (0: it does not scan in chunks)."""
        return 0

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        """FLOPs by term on one sequence of ``seq_len`` tokens; ``reference`` counts what HF's torch reference
        computes where it differs from the ideal algorithm (whole zero-padded chunks)."""
        raise NotImplementedError


@register_part
@dataclass(frozen=True)
class Mamba1(Part):
    """A Mamba-1 mixer (Mamba, Falcon-Mamba, Jamba): ``d_inner`` channels, ``state_size`` states per channel,
    a depthwise conv of ``conv_kernel`` taps and a dt projection of rank ``dt_rank`` (0: ⌈d_model/16⌉)."""

    d_inner: int
    state_size: int
    conv_kernel: int = 4
    dt_rank: int = 0

    kind: ClassVar[str] = "mamba1"
    ranks: ClassVar[bool] = True
    matmul_terms: ClassVar[frozenset[str]] = frozenset({"in_proj", "conv1d", "x_proj", "dt_proj", "scan_out",
                                                        "out_proj"})

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        n, d, e, s = float(seq_len), d_model, self.d_inner, self.state_size
        k = self.conv_kernel
        r = self.dt_rank or math.ceil(d / 16)
        return {
            "block_norm": 4.0 * n * d,
            "in_proj": 2.0 * n * d * 2 * e,
            "conv1d": 2.0 * n * e * k,
            "x_proj": 2.0 * n * e * (r + 2 * s),
            "dt_proj": 2.0 * n * r * e,
            "scan_out": 2.0 * n * e * s,                      # y_t = C_t · h_t
            "scan_update": 6.0 * n * e * s,                   # exp(dt·A), dt·B·u, h·dA + dBu
            "gate_skip": 6.0 * n * e,                         # softplus(dt), D·u, silu(z)·y
            "out_proj": 2.0 * n * e * d,
        }


@register_part
@dataclass(frozen=True)
class Mamba2(Part):
    """A Mamba-2 (SSD) mixer: ``heads`` heads of ``head_dim`` (``d_inner`` channels), ``n_groups`` groups of B/C
    with ``state_size`` states, a depthwise conv of ``conv_kernel`` taps, scanning in chunks of ``chunk_size``."""

    d_inner: int
    heads: int
    head_dim: int
    state_size: int
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 256

    kind: ClassVar[str] = "mamba2"
    ranks: ClassVar[bool] = True
    matmul_terms: ClassVar[frozenset[str]] = frozenset({
        "in_proj", "conv1d", "ssd_scores", "ssd_intra", "ssd_chunk_states", "ssd_inter_chunk", "ssd_state_out",
        "out_proj"})
    padded_terms: ClassVar[frozenset[str]] = frozenset({
        "ssd_scores", "ssd_intra", "ssd_chunk_states", "ssd_inter_chunk", "ssd_state_out", "ssd_elementwise"})

    @property
    def chunk(self) -> int:
        return self.chunk_size

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        """SSD terms: by default the ideal chunked algorithm, linear in ``seq_len``; ``reference=True`` counts what
        HF's torch reference computes (whole zero-padded chunks and an inter-chunk recurrence quadratic in the
        number of chunks) — what ``FlopCounterMode`` measures on CPU."""
        n, d, e, s = float(seq_len), d_model, self.d_inner, self.state_size
        k = self.conv_kernel
        h, p, g, q = self.heads, self.head_dim, self.n_groups, self.chunk_size
        if reference:
            chunks = float(math.ceil(seq_len / q)) if seq_len > 0 else 0.0
            padded = chunks * q
            inter = 2.0 * (chunks + 1) ** 2 * h * p * s
        else:
            padded, chunks = n, n / q
            inter = 2.0 * chunks * h * p * s
        conv_dim = e + 2 * g * s
        return {
            "block_norm": 4.0 * n * d,
            "in_proj": 2.0 * n * d * (2 * e + 2 * g * s + h),
            "conv1d": 2.0 * n * conv_dim * k,
            "ssd_scores": 2.0 * padded * q * h * s,               # C·Bᵀ inside each chunk
            "ssd_intra": 2.0 * padded * q * h * p,                # (scores ∘ decay) · x
            "ssd_chunk_states": 2.0 * padded * h * p * s,         # Σ_l B_l x_l per chunk
            "ssd_inter_chunk": inter,                             # chunk-state recurrence
            "ssd_state_out": 2.0 * padded * h * p * s,            # C · chunk start state
            "ssd_elementwise": padded * (q * h * 3 + h * p * 4),  # segsum, decays, dt·x, D skip
            "gated_norm": 7.0 * n * e,
            "out_proj": 2.0 * n * e * d,
        }


@register_part
@dataclass(frozen=True)
class Attention(Part):
    """Self-attention: ``heads`` query heads and ``kv_heads`` key/value heads (0: as many) of ``head_dim``,
    reading ``width`` features (0: d_model; Zamba2's shared block reads 2·d_model). ``window``: a sliding window
    (None: full causal); the score and value products are counted dense, as the masked kernels compute them.
    ``output_gate``: a sigmoid gate on the attention output projected from the input (Qwen3-Next).
    ``adapter_rank``: low-rank adapters on each of q, k, v (width → r → width; Zamba2's per-use LoRA)."""

    heads: int
    kv_heads: int
    head_dim: int
    width: int = 0
    window: Optional[int] = None
    output_gate: bool = False
    adapter_rank: int = 0

    kind: ClassVar[str] = "attention"
    quadratic: ClassVar[bool] = True
    matmul_terms: ClassVar[frozenset[str]] = frozenset({"attn_qkv", "attn_scores", "attn_values", "attn_out",
                                                        "attn_adapters", "attn_gate_proj"})

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        """The score and value products are the dense n×n ones the kernels compute (quadratic in the tokens the
        layer sees, which is why reducing before attention gains more than linearly)."""
        n, d = float(seq_len), d_model
        w = self.width or d
        h, kv, dh = self.heads, self.kv_heads or self.heads, self.head_dim
        terms = {
            "attn_norm": 4.0 * n * w,
            "attn_qkv": 2.0 * n * w * (h + 2 * kv) * dh,
            "attn_scores": 2.0 * n * n * h * dh,
            "attn_softmax": 5.0 * n * n * h,
            "attn_values": 2.0 * n * n * h * dh,
            "attn_out": 2.0 * n * h * dh * d,
        }
        if self.adapter_rank:  # q, k, v each + up(down(x)), and the three additions
            r = self.adapter_rank
            terms["attn_adapters"] = 3 * (2.0 * n * w * r + 2.0 * n * r * w)
            terms["attn_adapter_add"] = 3.0 * n * w
        if self.output_gate:  # gate = x·W_g (h·dh outputs), out = attn ∘ sigmoid(gate)
            terms["attn_gate_proj"] = 2.0 * n * w * h * dh
            terms["attn_gate"] = 5.0 * n * h * dh
        return terms


@register_part
@dataclass(frozen=True)
class LatentAttention(Attention):
    """Multi-head latent attention (DeepSeek's MLA; Kimi-Linear's, with no RoPE): queries projected directly
    (``q_rank`` 0) or through a rank-``q_rank`` bottleneck, keys and values from one shared latent of ``kv_rank``
    (plus a shared ``rope_dim`` key part), expanded per head to ``head_dim`` = nope + rope query/key features and
    ``value_dim`` value features. ``heads`` = ``kv_heads``. Scores and values are counted dense, as for
    :class:`Attention`; its 4-D mask and quadratic cost are an attention's (it is one)."""

    kv_rank: int = 0
    rope_dim: int = 0
    value_dim: int = 0
    q_rank: int = 0

    kind: ClassVar[str] = "latent_attention"

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        n, d = float(seq_len), d_model
        h, dq, dv, r = self.heads, self.head_dim, self.value_dim, self.kv_rank
        nope = dq - self.rope_dim
        if self.q_rank:
            query = 2.0 * n * d * self.q_rank + 2.0 * n * self.q_rank * h * dq
        else:
            query = 2.0 * n * d * h * dq
        terms = {
            "attn_norm": 4.0 * n * d + 4.0 * n * (r + self.q_rank),      # pre-norm, latent (and query) norms
            "attn_qkv": query + 2.0 * n * d * (r + self.rope_dim) + 2.0 * n * r * h * (nope + dv),
            "attn_scores": 2.0 * n * n * h * dq,
            "attn_softmax": 5.0 * n * n * h,
            "attn_values": 2.0 * n * n * h * dv,
            "attn_out": 2.0 * n * h * dv * d,
        }
        return terms


@register_part
@dataclass(frozen=True)
class MLP(Part):
    """A feed-forward block of ``size`` hidden units reading ``width`` features (0: d_model) and writing d_model;
    ``gated``: a gated (SwiGLU-style) up projection; ``adapter_rank``: a low-rank adapter on the up projection
    (Zamba2's per-use LoRA on its shared MLP)."""

    size: int
    gated: bool = False
    width: int = 0
    adapter_rank: int = 0

    kind: ClassVar[str] = "mlp"
    matmul_terms: ClassVar[frozenset[str]] = frozenset({"mlp_in", "mlp_out", "mlp_adapters"})

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        n, w, size = float(seq_len), self.width or d_model, self.size
        up = 2 if self.gated else 1
        terms = {"mlp_norm": 4.0 * n * w, "mlp_in": 2.0 * n * w * up * size,
                 "mlp_act": float(up + 1) * n * size, "mlp_out": 2.0 * n * size * d_model}
        if self.adapter_rank:  # the up projection + up(down(x)), and the addition
            r = self.adapter_rank
            terms["mlp_adapters"] = 2.0 * n * w * r + 2.0 * n * r * up * size
            terms["mlp_adapter_add"] = float(up) * n * size
        return terms


@register_part
@dataclass(frozen=True)
class MoE(Part):
    """Active FLOPs of a mixture of experts: a router over ``experts``, ``top_k`` experts of ``size`` hidden units
    per token and a shared expert of ``shared_size`` (0: none); ``gated`` experts (SwiGLU); ``shared_gate``: the
    shared expert's output is scaled by a sigmoid of a d_model → 1 projection (Qwen3-Next, Qwen3.5-MoE)."""

    experts: int
    top_k: int
    size: int
    shared_size: int = 0
    gated: bool = False
    shared_gate: bool = False

    kind: ClassVar[str] = "moe"
    matmul_terms: ClassVar[frozenset[str]] = frozenset({"moe_router", "moe_experts", "moe_shared",
                                                        "moe_shared_gate"})

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        n, d = float(seq_len), d_model
        up = 2 if self.gated else 1
        # projections (what FlopCounterMode counts) apart from the activations (what it does not)
        expert = 2.0 * d * up * self.size + 2.0 * self.size * d
        shared = 2.0 * d * up * self.shared_size + 2.0 * self.shared_size * d
        terms = {"moe_norm": 4.0 * n * d, "moe_router": 2.0 * n * d * self.experts,
                 "moe_experts": n * self.top_k * expert, "moe_shared": n * shared,
                 "moe_act": n * (up + 1) * (self.top_k * self.size + self.shared_size)}
        if self.shared_gate:
            terms["moe_shared_gate"] = 2.0 * n * d               # the d_model → 1 projection
            terms["moe_shared_scale"] = n * (4.0 + d)           # its sigmoid, times the shared output
        return terms


@register_part
@dataclass(frozen=True)
class Linear(Part):
    """A plain projection from ``width`` features (0: d_model) to d_model (Zamba2's projection of its shared
    block's output)."""

    width: int = 0

    kind: ClassVar[str] = "linear"
    matmul_terms: ClassVar[frozenset[str]] = frozenset({"linear"})

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        return {"linear": 2.0 * float(seq_len) * (self.width or d_model) * d_model}


@register_part
@dataclass(frozen=True)
class DeltaRule(Part):
    """A linear-attention mixer with a delta-rule state update, computed in chunks of ``chunk_size`` (Gated
    DeltaNet in Qwen3-Next / Qwen3.5 / OLMo-Hybrid; KDA in Kimi-Linear with ``channel_gate``): ``key_heads``
    query/key heads of ``key_head_dim``, ``value_heads`` value heads of ``value_head_dim``, a depthwise conv of
    ``conv_kernel`` taps on q, k, v, an output gate and a gated RMSNorm before ``out_proj``.

    The terms follow HF's torch chunked path (``torch_chunk_gated_delta_rule``), checked term by term against
    ``FlopCounterMode`` on the tiny Qwen3-Next (tests/families/test_qwen3_next.py): q and k are repeated to the
    value heads, so every per-head product runs over ``value_heads``; per chunk of C tokens and head the matmuls
    are k_β·kᵀ and q·kᵀ (C²·d_k each), the in-chunk attention times the corrected values (C²·d_v), and three
    state-sized products (the state read for the values' correction, the queries' read, the state update:
    C·d_k·d_v each). The two unit-triangular solves of the UT transform (C²/2 multiply-adds per right-hand-side
    column, d_k + d_v columns) are real work the counter does not see (``delta_solve``). HF's causal conv pads
    ``conv_kernel − 1`` steps and computes their outputs too (``reference``).

    ``channel_gate`` (KDA, Kimi-Linear): a decay per key channel instead of per head, q, k, v projected apart, the
    decay and the output gate through rank-``gate_rank`` bottlenecks (d → r → heads·head_dim); the terms then
    follow HF's torch ``chunk_kimi_delta_attention`` (:meth:`kda_terms`)."""

    key_heads: int
    value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int = 4
    chunk_size: int = 64
    channel_gate: bool = False
    gate_rank: int = 0

    kind: ClassVar[str] = "delta_rule"
    ranks: ClassVar[bool] = True
    matmul_terms: ClassVar[frozenset[str]] = frozenset({"delta_in_proj", "delta_conv", "delta_intra",
                                                        "delta_state", "delta_out_proj"})
    padded_terms: ClassVar[frozenset[str]] = frozenset({"delta_intra", "delta_state", "delta_solve",
                                                        "delta_elementwise"})

    @property
    def chunk(self) -> int:
        return self.chunk_size

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        if self.channel_gate:
            return self.kda_terms(d_model, seq_len, reference)
        n, d, q = float(seq_len), d_model, self.chunk_size
        hk, hv, dk, dv = self.key_heads, self.value_heads, self.key_head_dim, self.value_head_dim
        padded = float(math.ceil(seq_len / q) * q) if reference else n
        conv_steps = n + self.conv_kernel - 1 if reference and seq_len > 0 else n
        projected = 2 * hk * dk + 2 * hv * dv + 2 * hv  # q, k, v, output gate z, β, decay (one per head)
        return {
            "delta_norm": 4.0 * n * d,
            "delta_in_proj": 2.0 * n * d * projected,
            "delta_conv": 2.0 * conv_steps * (2 * hk * dk + hv * dv) * self.conv_kernel,
            "delta_intra": 2.0 * padded * q * hv * (2 * dk + dv),      # k_β·kᵀ, q·kᵀ, attention · new values
            "delta_state": 3 * 2.0 * padded * hv * dk * dv,            # state reads (values, queries), update
            "delta_solve": padded * q * hv * (dk + dv),                # UT transform: two triangular solves
            "delta_elementwise": padded * hv * (3 * q + 6 * dk + 4 * dv),  # decays, β scaling, l2 norms, gates
            "delta_gated_norm": 7.0 * n * hv * dv,
            "delta_out_proj": 2.0 * n * hv * dv * d,
        }

    def kda_terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        """KDA as HF's torch path computes it (matmul terms checked equal to ``FlopCounterMode`` on the tiny
        Kimi-Linear, tests/families/test_kimi_linear.py). Projections: q, k, v (d → heads·head_dim each), β
        (d → heads), the decay and the output gate (d → r → heads·head_dim each). Per chunk of C tokens and head
        the counted matmuls are the in-chunk inverse times v_β and times k_β·exp(g) (C²·d_v, C²·d_k), the
        in-chunk attention times the new values (C²·d_v), and three state-sized products (C·d_k·d_v each). Not
        counted:
        the per-channel decayed k·k and q·k products, elementwise over C²·d_k each (``delta_elementwise``), and
        the forward substitution that inverts the unit-triangular in-chunk matrix, Σ i² ≈ C³/3 multiply-adds
        per chunk and head (``delta_solve``)."""
        n, d, q = float(seq_len), d_model, self.chunk_size
        hk, hv, dk, dv = self.key_heads, self.value_heads, self.key_head_dim, self.value_head_dim
        r = self.gate_rank or dk
        padded = float(math.ceil(seq_len / q) * q) if reference else n
        conv_steps = n + self.conv_kernel - 1 if reference and seq_len > 0 else n
        return {
            "delta_norm": 4.0 * n * d,
            "delta_in_proj": 2.0 * n * d * (2 * hk * dk + hv * dv + hv + 2 * r) + 2.0 * n * r * hv * (dk + dv),
            "delta_conv": 2.0 * conv_steps * (2 * hk * dk + hv * dv) * self.conv_kernel,
            "delta_intra": 2.0 * padded * q * hv * (dk + 2 * dv),
            "delta_state": 3 * 2.0 * padded * hv * dk * dv,
            "delta_solve": padded * hv * 2.0 * q * q / 3.0,
            # decayed k·k and q·k (3 per pair and channel each, plus the decay's exp), decay and β scaling,
            # l2 norms, softplus/exp of the decay
            "delta_elementwise": padded * hv * (7 * q * dk + 10 * dk + 4 * dv),
            "delta_gated_norm": 7.0 * n * hv * dv,
            "delta_out_proj": 2.0 * n * hv * dv * d,
        }


@register_part
@dataclass(frozen=True)
class ShortConv(Part):
    """A gated short convolution (LFM2): ``in_proj`` to B, C, x (3·``width``), ``C ∘ conv(B ∘ x)`` with a causal
    depthwise conv of ``kernel`` taps, ``out_proj`` back to d_model. Its gated conv output ranks tokens."""

    width: int
    kernel: int

    kind: ClassVar[str] = "short_conv"
    ranks: ClassVar[bool] = True
    matmul_terms: ClassVar[frozenset[str]] = frozenset({"conv_in_proj", "conv_conv", "conv_out_proj"})

    def terms(self, d_model: int, seq_len: int, reference: bool = False) -> dict[str, float]:
        """``reference``: HF's torch path convolves the input padded by kernel − 1 on both sides and keeps the
        first n outputs, so it computes n + kernel − 1 of them."""
        n, d, w = float(seq_len), d_model, self.width
        computed = n + self.kernel - 1 if reference and seq_len > 0 else n
        return {
            "conv_norm": 4.0 * n * d,
            "conv_in_proj": 2.0 * n * d * 3 * w,
            "conv_conv": 2.0 * computed * w * self.kernel,
            "conv_gates": 2.0 * n * w,                            # B ∘ x and C ∘ conv
            "conv_out_proj": 2.0 * n * w * d,
        }


@dataclass(frozen=True)
class ModelShape:
    """The dimensions the FLOPs depend on, layer by layer (a model adapter builds it from the HF config)."""

    d_model: int
    n_layer: int
    vocab_size: int
    layers: tuple[tuple[Part, ...], ...]

    def __post_init__(self) -> None:
        if len(self.layers) != self.n_layer:
            raise ValueError(f"ModelShape: {len(self.layers)} layer part lists for {self.n_layer} layers")
        bad = [p for parts in self.layers for p in parts if not isinstance(p, Part)]
        if bad:
            raise ValueError(f"ModelShape: layer parts must be Part instances, not {bad[:3]}")

    @classmethod
    def repeated(cls, d_model: int, n_layer: int, vocab_size: int, *parts: Part) -> "ModelShape":
        """Every layer the same ``parts`` (a pure Mamba / Mamba-2 model: one mixer per layer)."""
        return cls(d_model, n_layer, vocab_size, (tuple(parts),) * n_layer)

    def parts(self, layer: int) -> tuple[Part, ...]:
        return self.layers[layer]

    def kinds(self, layer: int) -> tuple[str, ...]:
        """The kind names of ``layer``'s parts (``mamba2``, ``attention``, ``mlp``, ...)."""
        return tuple(p.kind for p in self.layers[layer])

    def first(self, cls: type[Part]) -> Optional[Part]:
        """The first part of class ``cls`` in the model (None without one)."""
        return next((p for parts in self.layers for p in parts if isinstance(p, cls)), None)

    @property
    def uniform(self) -> bool:
        """Every layer has the same parts and none is quadratic: the cost per token is the same at every layer and
        every length, so a schedule's backbone reduction is its token average."""
        return all(parts == self.layers[0] for parts in self.layers) and not any(
            p.quadratic for parts in self.layers for p in parts)

    def ranking_layers(self) -> list[int]:
        """Layers with a part whose per-token output ranks tokens (``importance_source: ssm_out``)."""
        return [l for l, parts in enumerate(self.layers) if any(p.ranks for p in parts)]

    @property
    def chunk(self) -> int:
        """The chunk every chunked scan of the model divides (the lcm of its parts' chunks; 0: none scans in
        chunks)."""
        chunks = {p.chunk for parts in self.layers for p in parts if p.chunk}
        return math.lcm(*chunks) if chunks else 0
