"""Schema for the `bench` config group (speed / memory presets)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tor_exp.errors import ConfigError

BENCH_KINDS = ("prefill", "generate", "memory", "overhead")
#: plain: the method's schedule as configured; aligned: its chunk-aligned form (reduction.chunk_align); both
CHUNK_ALIGN_MODES = ("plain", "aligned", "both")
LOGITS_MODES = ("all", "last")


@dataclass
class BenchConfig:
    """One preset: a batch × length grid, the FLOPs targets run beside `none` in the same process.

    ``memory_logits``: the memory preset measures each of these logits modes (the released code's memory
    saving comes mostly from the smaller full-vocabulary logits tensor, so both are shown).
    ``decode``: ``auto`` = the static single-token step (CUDA graph on CUDA when ``cuda_graph``), ``hf`` =
    the model's own forward per token (HF eager), ``static`` = the static step without a graph.
    ``seed``: of the random prompt token ids. ``logits_float``: see the field comment.
    """

    kind: str = "prefill"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    seq_lens: list[int] = field(default_factory=lambda: [256])
    flops_targets: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3])
    new_tokens: int = 100
    warmup: int = 1
    repeats: int = 3
    # timed runs round-robin over the variants (fairer when the machine's speed drifts), else one block each
    interleave: bool = True
    logits: str = "last"
    # decode with a captured CUDA graph (GPU only; ignored on CPU)
    cuda_graph: bool = True
    plot: bool = True
    memory_logits: list[str] = field(default_factory=lambda: ["all", "last"])
    decode: str = "auto"
    seed: int = 1234
    # NVML sampling period (ms) for the memory preset's device-level peak
    nvml_interval_ms: float = 1.0
    # optional label of the machine for the markdown table (null = detected)
    machine: Optional[str] = None
    # cast logits to float32 as HF's forward does (false: keep the LM head's dtype, as mamba_ssm's model does;
    # with bf16 weights that halves the full-vocabulary logits tensor of the memory preset)
    logits_float: bool = False
    # plain | aligned | both: run the chunk-aligned schedule (reduction.chunk_align) instead of / beside the plain one
    chunk_align: str = "plain"

    def __post_init__(self) -> None:
        if self.kind not in BENCH_KINDS:
            raise ConfigError(f"bench.kind={self.kind!r}: must be one of {', '.join(BENCH_KINDS)}")
        if self.logits not in LOGITS_MODES:
            raise ConfigError(f"bench.logits={self.logits!r}: must be one of {', '.join(LOGITS_MODES)}")
        for key, values in (("bench.batch_sizes", self.batch_sizes), ("bench.seq_lens", self.seq_lens)):
            if not values or any((not isinstance(v, int)) or v <= 0 for v in values):
                raise ConfigError(f"{key}={list(values)!r}: must be a non-empty list of positive integers")
        if any(not 0.0 <= f < 1.0 for f in self.flops_targets):
            raise ConfigError(f"bench.flops_targets={list(self.flops_targets)!r}: each must be in [0, 1)")
        if self.repeats < 1:
            raise ConfigError(f"bench.repeats={self.repeats!r}: must be >= 1")
        if self.warmup < 0:
            raise ConfigError(f"bench.warmup={self.warmup!r}: must be >= 0")
        if self.new_tokens < 1:
            raise ConfigError(f"bench.new_tokens={self.new_tokens!r}: must be >= 1")
        if not self.memory_logits or any(m not in LOGITS_MODES for m in self.memory_logits):
            raise ConfigError(f"bench.memory_logits={list(self.memory_logits)!r}: each must be one of all, last")
        if self.decode not in ("auto", "hf", "static"):
            raise ConfigError(f"bench.decode={self.decode!r}: must be one of auto, hf, static")
        if self.chunk_align not in CHUNK_ALIGN_MODES:
            raise ConfigError(f"bench.chunk_align={self.chunk_align!r}: must be one of {', '.join(CHUNK_ALIGN_MODES)}")
        if self.nvml_interval_ms <= 0:
            raise ConfigError(f"bench.nvml_interval_ms={self.nvml_interval_ms!r}: must be > 0")
