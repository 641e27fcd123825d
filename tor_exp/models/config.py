"""Hydra schema of the ``model`` config group (registered by the lead as group "model", name "model_schema").

One dataclass describes every way a model can be obtained: a HF-format hub id or directory (``hf``), a
checkpoint in the original ``mamba_ssm`` layout that is converted on load (``mamba_ssm``), a random tiny model
for tests (``tiny``) or a local HF-format directory, possibly shipped inside the package (``local``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tor_exp.errors import ConfigError

FAMILIES = ("mamba", "mamba2")
SOURCES = ("hf", "mamba_ssm", "tiny", "local")
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("hf", "mamba_ssm")


@dataclass
class TinyModelConfig:
    """Shape of a randomly initialised model (``source: tiny``). Kept tiny so CPU tests stay fast."""

    d_model: int = 64
    n_layer: int = 16
    vocab_size: int = 258
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    #: Mamba-2 only: HF's reference chunk scan pads to a whole chunk, so keep it small on CPU.
    chunk_size: int = 32
    head_dim: int = 16
    n_groups: int = 1

    def validate(self, family: str) -> None:
        for key in ("d_model", "n_layer", "vocab_size", "state_size", "expand", "conv_kernel", "chunk_size",
                    "head_dim", "n_groups"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.tiny.{key}={value!r}: must be a positive integer")
        if family == "mamba2":
            inner = self.d_model * self.expand
            if inner % self.head_dim:
                raise ConfigError(f"model.tiny.head_dim={self.head_dim}: must divide d_model*expand={inner}")
            if (inner // self.head_dim) % self.n_groups:
                raise ConfigError(f"model.tiny.n_groups={self.n_groups}: must divide the number of heads")


@dataclass
class ModelConfig:
    """Which model to load and its paper-default reduction locations.

    ``path``: hub id or directory (unused for ``tiny``); ``local`` paths may start with ``pkg://<package>/``
    to point inside an installed package. ``tokenizer``: hub id or directory; null = same as ``path``;
    ``byte`` = the built-in byte-level tokenizer (always used by tiny models).
    ``locations``: "reduce after block l" indices used when ``reduction.locations`` is null.
    """

    name: str = "tiny_mamba2"
    family: str = "mamba2"
    source: str = "tiny"
    path: Optional[str] = None
    tokenizer: Optional[str] = None
    n_layer: int = 16
    locations: list[int] = field(default_factory=lambda: [4, 7, 10, 13])
    dtype: str = "float32"
    backend: str = "hf"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    seed: int = 0
    #: text that post-training-calibrated methods (LTMP) see before evaluation: a .txt file or a .jsonl with a
    #: "text" field (pkg:// allowed); null = the generic English paragraphs in tor_exp/assets/calibration.txt
    calibration_text: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.tiny, dict):
            self.tiny = TinyModelConfig(**self.tiny)
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family={self.family!r}: must be one of {', '.join(FAMILIES)}")
        if self.source not in SOURCES:
            raise ConfigError(f"model.source={self.source!r}: must be one of {', '.join(SOURCES)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r}: must be one of {', '.join(DTYPES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"model.backend={self.backend!r}: must be one of {', '.join(BACKENDS)}")
        if self.source != "tiny" and not self.path:
            raise ConfigError(f"model.path={self.path!r}: required when model.source={self.source}")
        if not isinstance(self.n_layer, int) or self.n_layer <= 0:
            raise ConfigError(f"model.n_layer={self.n_layer!r}: must be a positive integer")
        if self.source == "tiny":
            self.tiny.validate(self.family)
            if self.tiny.n_layer != self.n_layer:
                raise ConfigError(
                    f"model.n_layer={self.n_layer}: must equal model.tiny.n_layer={self.tiny.n_layer} for tiny models"
                )
        locs = list(self.locations or [])
        if any((not isinstance(l, int)) or l < 0 or l >= self.n_layer - 1 for l in locs):
            raise ConfigError(f"model.locations={locs}: each must be an integer in [0, {self.n_layer - 2}]")
        if sorted(set(locs)) != locs:
            raise ConfigError(f"model.locations={locs}: must be strictly increasing")
        self.locations = locs

    @property
    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]
