"""``backend: mamba_ssm``: token reduction on mamba_ssm's own ``MambaLMHeadModel`` (fused GPU kernels).

UNTESTED ON THIS MACHINE: mamba_ssm needs CUDA and cannot be installed here. The module imports without
mamba_ssm; everything that needs it raises a ConfigError naming ``model.backend``.

mamba_ssm blocks already return the two streams METHOD.md talks about — ``(hidden, residual)`` with the add
deferred to the next block — so the adapter only reduces between blocks and adds them at the end. Its kernels
take no padding mask: rows are right-padded after a reduction, which is harmless for the real tokens
(causality), but batches must not be left-padded. ``ssm_out`` is not reachable inside the fused kernels, so
methods that need it must use ``importance_source: mixer_out``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from tor_exp.errors import ConfigError
from tor_exp.reduction.state import TokenState


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

    from tor_exp.models.loading import resolve_path

    model = MambaLMHeadModel.from_pretrained(resolve_path(cfg.path), device=str(device), dtype=cfg.torch_dtype)
    return model.eval()


@torch.no_grad()
def mamba_ssm_reduced_forward(
    model: Any,
    input_ids: Tensor,
    method: Any = None,
    schedule: Any = None,
    attention_mask: Optional[Tensor] = None,
    protected: Optional[Tensor] = None,
) -> tuple[Tensor, TokenState, Tensor]:
    """Blocks of a ``MambaLMHeadModel`` with reduction between them; returns (logits, final state, counts)."""
    if method is not None and "ssm_out" in (method.needed_features or set()):
        raise ConfigError("reduction.importance_source=ssm_out: not available with model.backend=mamba_ssm")
    backbone = model.backbone
    hidden = backbone.embedding(input_ids)
    residual = torch.zeros_like(hidden, dtype=torch.float32)
    valid = None if attention_mask is None else attention_mask.bool()
    state = TokenState.initial(hidden, residual, valid=valid, protected=protected)
    locations = set(schedule.locations) if method is not None and schedule is not None else set()
    counts = []
    res: Optional[Tensor] = None
    for layer, block in enumerate(backbone.layers):
        counts.append(state.valid.sum(dim=1))
        hidden, res = block(hidden, res)
        if layer in locations:
            state = state.replace(hidden=hidden, residual=res)
            state = method.reduce(state, {"mixer_out": hidden, "residual": res}, schedule.keep_ratio, layer)
            hidden, res = state.hidden, state.residual
    total = hidden + res if res is not None else hidden
    normed = backbone.norm_f(total.to(backbone.norm_f.weight.dtype))
    logits = model.lm_head(normed).float()
    return logits, state, torch.stack(counts, dim=1)
