"""The one backbone loop: embeddings → blocks (reducing at the schedule's locations) → final norm.

Shaped like mamba_ssm's ``Block``: between blocks the sequence is two streams, ``hidden`` (the last block's
mixer output) and ``residual`` (the running sum that block saw), and each backend provides one
``step(block, hidden, residual, ...) -> (hidden, residual, features)``. At a reduction location the two streams
are exactly what METHOD.md §0 hands a method as a :class:`TokenState`, so both backends share this loop, the
reduction call and the bookkeeping (positions, padding, per-layer token counts, observers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn

from tor_exp.models.flops import Schedule
from tor_exp.reduction.base import ReductionObserver, run_reduction
from tor_exp.reduction.state import TokenState


# ------------------------------------------------------------------------------------------ backends
class Backend(Protocol):
    """What the loop needs from a model family's implementation (HF transformers, mamba_ssm)."""

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor: ...

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]: ...

    def step(self, block: nn.Module, hidden: Tensor, residual: Optional[Tensor], valid: Tensor, all_valid: bool,
             cache: Any, want_ssm: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]: ...

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Tensor) -> Tensor: ...


def backend_of(model: nn.Module) -> Backend:
    from tor_exp.models.mamba_ssm_backend import MAMBA_SSM, is_mamba_ssm_model

    if is_mamba_ssm_model(model):
        return MAMBA_SSM
    from tor_exp.models.hf_backend import HF

    return HF


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class BackboneOutput:
    """Final normed hidden states [B, N', D], the token state after the last reduction (positions, valid,
    sizes of the surviving tokens), tokens entering each layer [B, L]."""

    hidden: Tensor
    state: TokenState
    tokens_per_layer: Tensor


def drive_backbone(
    model: nn.Module,
    input_ids: Optional[Tensor] = None,
    attention_mask: Optional[Tensor] = None,
    protected: Optional[Tensor] = None,
    method: Any = None,
    schedule: Optional[Schedule] = None,
    cache: Any = None,
    inputs_embeds: Optional[Tensor] = None,
    observers: Sequence[ReductionObserver] = (),
) -> BackboneOutput:
    """Run the backbone, reducing with ``method`` after each block in ``schedule.locations``.

    ``method=None`` runs the plain model (positions = arange). Padding (``attention_mask`` 0) and ``protected``
    tokens are unreducible; a cache (generation prefill) receives each layer's state of the sequence it saw.
    """
    backend = backend_of(model)
    h = backend.embed(model, input_ids) if inputs_embeds is None else inputs_embeds
    batch, length = h.shape[:2]
    valid = (torch.ones(batch, length, dtype=torch.bool, device=h.device) if attention_mask is None
             else attention_mask.to(h.device).bool())
    state = TokenState.initial(h, h, valid=valid, protected=None if protected is None else protected.to(h.device))
    locations = set(schedule.locations) if (method is not None and schedule is not None) else set()
    need = set(getattr(method, "needed_features", set()) or set()) if method is not None else set()
    all_valid = bool(state.valid.all())  # re-read only where a reduction can change it (one sync per location)
    hidden, residual, counts = h, None, []
    for layer, block in enumerate(backend.blocks(model)):
        counts.append(state.valid.sum(dim=1))
        reduce_here = layer in locations
        hidden, residual, features = backend.step(block, hidden, residual, state.valid, all_valid, cache,
                                                  reduce_here and "ssm_out" in need)
        if reduce_here:
            state = run_reduction(method, state.replace(hidden=hidden, residual=residual), features,
                                  schedule.keep_ratio, layer, observers)
            hidden, residual = state.hidden, state.residual
            all_valid = bool(state.valid.all())
    return BackboneOutput(backend.final_norm(model, hidden, residual), state, torch.stack(counts, dim=1))
