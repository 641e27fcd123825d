"""``backend: mamba_ssm``: token reduction on mamba_ssm's own ``MambaLMHeadModel`` (fused GPU kernels).

UNTESTED ON THIS MACHINE: mamba_ssm needs CUDA and cannot be installed here. The module imports without
mamba_ssm; everything that needs it raises a ConfigError naming ``model.backend``.

mamba_ssm blocks already return the two streams METHOD.md talks about — ``(hidden, residual)`` with the add
deferred to the next block — so :meth:`MambaSSMBackend.step` is the block call itself. Its kernels take no
padding mask: rows are right-padded after a reduction, which is harmless for the real tokens (causality), but
batches must not be left-padded. ``ssm_out`` is not reachable inside the fused kernels, so methods that need it
must use ``importance_source: mixer_out``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from tor_exp.errors import ConfigError
from tor_exp.paths import resolve_pkg_path


def mamba_ssm_available() -> bool:
    try:
        import mamba_ssm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def is_mamba_ssm_model(model: Any) -> bool:
    return type(model).__name__ == "MambaLMHeadModel" and hasattr(model, "backbone")


def load_mamba_ssm_backend(cfg: Any, device: str | torch.device = "cuda"):
    """``MambaLMHeadModel.from_pretrained`` on a mamba_ssm-format checkpoint (hub id or directory)."""
    if not mamba_ssm_available():
        raise ConfigError("model.backend=mamba_ssm: the mamba_ssm package is not importable (it needs CUDA)")
    if cfg.source != "mamba_ssm":
        raise ConfigError(f"model.backend=mamba_ssm: needs model.source=mamba_ssm, got {cfg.source!r}")
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    model = MambaLMHeadModel.from_pretrained(resolve_pkg_path(cfg.path, "model.path"), device=str(device),
                                             dtype=cfg.torch_dtype)
    return model.eval()


class MambaSSMBackend:
    """Backend protocol of :mod:`tor_exp.models.backbone` for ``MambaLMHeadModel``."""

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        return model.backbone.embedding(input_ids)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return model.backbone.layers

    def step(self, block: nn.Module, hidden: Tensor, residual: Optional[Tensor], valid: Tensor, all_valid: bool,
             cache: Any, want_ssm: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if want_ssm:
            raise ConfigError("reduction.importance_source=ssm_out: not available with model.backend=mamba_ssm")
        if cache is not None:
            raise ConfigError("model.backend=mamba_ssm: generation with a reduced prefill needs model.backend=hf")
        hidden, residual = block(hidden, residual)
        return hidden, residual, {"mixer_out": hidden, "residual": residual}

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Tensor) -> Tensor:
        norm = model.backbone.norm_f
        return norm((hidden + residual).to(norm.weight.dtype))


MAMBA_SSM = MambaSSMBackend()
