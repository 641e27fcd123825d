"""Hydra schema of the ``model`` config group (registered as group "model", name "model_schema").

One dataclass describes every way a model can be obtained: a HF-format hub id or directory (``hf``), a
checkpoint in the original ``mamba_ssm`` layout that is converted on load (``mamba_ssm``), a random tiny model
for tests (``tiny``) or a local HF-format directory, possibly shipped inside the package (``local``).
``family`` names the model family (its adapter in :mod:`tor_exp.models.families`); ``auto`` reads it from the
checkpoint's config.json.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from tor_exp.errors import ConfigError
from tor_exp.models.families.registry import family_info, family_names
from tor_exp.models.refusals import check_not_refused

#: the declared families (each family module's FAMILY_INFO, read without importing it); ``auto`` besides
FAMILIES = family_names()
#: ``random``: the shape of the checkpoint at ``path`` (its config.json only), weights drawn with ``seed``
SOURCES = ("hf", "mamba_ssm", "tiny", "local", "random")
#: families with attention layers (their FLOPs depend on the layer and the length; decode needs key bookkeeping)
HYBRID_FAMILIES = tuple(name for name in FAMILIES if family_info(name).hybrid)
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
    #: the family's own HF config keys (a hybrid's layer pattern, attention heads, MLP size, ...)
    config: dict[str, Any] = field(default_factory=dict)

    def validate(self, family: str) -> None:
        for key in ("d_model", "n_layer", "vocab_size", "state_size", "expand", "conv_kernel", "chunk_size",
                    "head_dim", "n_groups"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.tiny.{key}={value!r}: must be a positive integer")
        info = family_info(family)
        if info is None or info.mixer_heads:  # a Mamba-2-style mixer splits d_model·expand into heads
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
    ``locations``: "reduce after block l" indices used when ``reduction.locations`` is null (null: the paper's
    pattern scaled to the depth). ``n_layer`` null: the checkpoint's depth (``model=local``).
    ``allow_partial``: load a checkpoint whose weights do not cover the model (missing weights stay random; the
    job's record lists them) instead of refusing it.
    """

    name: str = "tiny_mamba2"
    family: str = "mamba2"
    source: str = "tiny"
    path: Optional[str] = None
    tokenizer: Optional[str] = None
    n_layer: Optional[int] = 16
    locations: Optional[list[int]] = field(default_factory=lambda: [4, 7, 10, 13])
    dtype: str = "float32"
    backend: str = "hf"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    seed: int = 0
    #: text that post-training-calibrated methods (LTMP) see before evaluation: a .txt file or a .jsonl with a
    #: "text" field (pkg:// allowed); null = the generic English paragraphs in tor_exp/assets/calibration.txt
    calibration_text: Optional[str] = None
    allow_partial: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tiny, dict):
            self.tiny = TinyModelConfig(**self.tiny)
        check_not_refused(family=self.family)
        if self.family not in (*FAMILIES, "auto"):
            raise ConfigError(f"model.family={self.family!r}: must be one of {', '.join(FAMILIES)} or auto")
        if self.source not in SOURCES:
            raise ConfigError(f"model.source={self.source!r}: must be one of {', '.join(SOURCES)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r}: must be one of {', '.join(DTYPES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"model.backend={self.backend!r}: must be one of {', '.join(BACKENDS)}")
        if self.source != "tiny" and not self.path:
            raise ConfigError(f"model.path={self.path!r}: required when model.source={self.source}")
        if self.source == "tiny" and self.path:
            raise ConfigError(f"model.path={self.path!r}: model.source=tiny builds a random model and reads no "
                              "checkpoint; for a saved checkpoint use model=local model.path=DIR")
        info = family_info(self.family)
        if info is not None and self.backend not in info.backends:
            raise ConfigError(f"model.backend={self.backend}: model.family={self.family} runs on "
                              f"model.backend={' or '.join(info.backends)}")
        if self.family == "auto" and self.source not in ("local", "hf"):
            raise ConfigError(f"model.family=auto: reads the family from config.json, so model.source must be "
                              f"local or hf, got {self.source}")
        if self.n_layer is not None and (not isinstance(self.n_layer, int) or self.n_layer <= 0):
            raise ConfigError(f"model.n_layer={self.n_layer!r}: must be a positive integer (or null: the checkpoint's)")
        if self.source == "tiny":
            self.tiny.validate(self.family)
            if self.n_layer is None or self.tiny.n_layer != self.n_layer:
                raise ConfigError(
                    f"model.n_layer={self.n_layer}: must equal model.tiny.n_layer={self.tiny.n_layer} for tiny models"
                )
        if self.locations is None:
            return
        locs = list(self.locations)
        # against the depth: tor_exp.models.schedule.resolve_locations, the one place that knows the depth
        if any(not isinstance(l, int) for l in locs):
            raise ConfigError(f"model.locations={locs}: each must be an integer")
        if sorted(set(locs)) != locs:
            raise ConfigError(f"model.locations={locs}: must be strictly increasing")
        self.locations = locs

    @property
    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]


#: a Hugging Face hub id: ``name`` or ``org/name`` (letters, digits, ``-``, ``_``, ``.``)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_path(value: str) -> bool:
    """A value meant as a directory, not a hub id: starts with ``.``, ``/`` or ``~``, or has a separator but is
    not of the ``org/name`` form."""
    return value.startswith((".", "/", "~")) or (os.sep in value and not _HUB_ID.fullmatch(value))


def resolve_model_path(path: str, source: str, base: str) -> str:
    """``model.path`` as the loader must read it: a relative directory is taken against ``base`` (the directory
    the user launched from, :func:`tor_exp.paths.launch_dir`, whatever the job's cwd), ``~`` expanded; a value
    that names a directory (``source: local``, or path-looking, :func:`looks_like_path`) and does not exist is
    one line here instead of a hub lookup later. Hub ids and ``pkg://`` paths are returned unchanged."""
    from tor_exp.paths import PKG_PREFIX, resolve_pkg_path

    if path.startswith(PKG_PREFIX):
        if source == "local" and not os.path.isdir(resolve_pkg_path(path, "model.path")):
            raise ConfigError(f"model.path={path}: no such directory ({resolve_pkg_path(path, 'model.path')})")
        return path
    full = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    if os.path.exists(full):
        return full
    if source == "local" or looks_like_path(path):
        where = "" if full == path else f" ({full})"
        raise ConfigError(f"model.path={path}: no such directory{where}")
    return path  # a hub id
