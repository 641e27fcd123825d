"""Token reduction inside a HF Mamba / Mamba-2 causal LM, in the spirit of ToMe's ``tome.patch.timm(model)``.

``patch(model, method, schedule)`` swaps the model's class for a subclass whose ``forward`` runs the one backbone
loop (:func:`tor_exp.models.backbone.drive_backbone`), so hidden states, the residual stream, the padding mask and
the original positions shrink together (a forward hook on a block cannot shrink the mask, NOTES.md). The model
stays a HF model: ``generate`` works (see :mod:`tor_exp.models.generation`) and ``unpatch`` restores the
original class exactly. :func:`reduced_forward` is the functional form, for every backend.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mamba2ForCausalLM, MambaForCausalLM
from transformers.cache_utils import DynamicCache
from transformers.utils import ModelOutput

from tor_exp.models.backbone import drive_backbone
from tor_exp.reduction.base import ReductionObserver
from tor_exp.models.tokens import gather_last, last_index, protect_last
from tor_exp.models.flops import ModelShape, Schedule, realised_flops_reduction
from tor_exp.models.mamba_ssm_backend import is_mamba_ssm_model

_ATTR = "_tor_exp_patch"


@dataclass
class PatchInfo:
    method: Any
    schedule: Schedule
    original_class: type
    last: Optional["ReducedOutput"] = None  # bookkeeping of the latest reduced forward (FLOPs, counts)
    observers: list[ReductionObserver] = field(default_factory=list)  # see :func:`observing`


@dataclass
class ReducedOutput:
    """Result of :func:`reduced_forward`.

    logits [B, N', V] float at the surviving tokens (``logits="last"``: [B, 1, V], each row's last real
    token); positions [B, N'] long (original column of each token, -1 at padding); valid [B, N'] bool;
    tokens_per_layer [B, L] real tokens entering each layer; n_input [B] real input tokens;
    flops: realised reductions (``proxy``, ``backbone``, ``total``).
    """

    logits: Tensor
    positions: Tensor
    valid: Tensor
    tokens_per_layer: Tensor
    n_input: Tensor
    flops: dict[str, float] = field(default_factory=dict)
    hidden: Optional[Tensor] = None
    cache: Any = None


@dataclass
class ReducedCausalLMOutput(ModelOutput):
    """HF causal-LM output of a patched model plus where each logit row came from."""

    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    cache: Any = None
    hidden_states: Optional[tuple] = None
    positions: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    tokens_per_layer: Optional[Tensor] = None


def _logits(model: nn.Module, hidden: Tensor) -> Tensor:
    return model.lm_head(hidden.to(model.lm_head.weight.dtype)).float()


def _cache_has_state(cache: Any) -> bool:
    if cache is None:
        return False
    try:
        return bool(cache.has_previous_state())
    except (ValueError, IndexError, AttributeError):
        return False


def get_patch(model: nn.Module) -> Optional[PatchInfo]:
    return getattr(model, _ATTR, None)


def reduced_forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    protected: Optional[Tensor] = None,
    logits: str = "all",
    *,
    method: Any = None,
    schedule: Optional[Schedule] = None,
    cache: Any = None,
) -> ReducedOutput:
    """Forward with the patched reduction (or ``method``/``schedule`` given here; neither ⇒ plain model).

    ``protected`` [B, N] bool marks tokens that must survive unchanged (e.g. scored continuation tokens);
    padding (``attention_mask`` 0) is never reduced and never affects other rows. ``logits="last"`` gives each
    row's last surviving token only: protect it (:func:`~tor_exp.models.backbone.protect_last`) when it must be
    the last input token itself.
    """
    if logits not in ("all", "last"):
        raise ValueError(f"logits={logits!r}: must be 'all' or 'last'")
    info = get_patch(model)
    observers: list[ReductionObserver] = [] if info is None else info.observers
    if method is None and info is not None:
        method, schedule = info.method, (schedule or info.schedule)
    valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
             else attention_mask.to(input_ids.device).bool())
    out = drive_backbone(model, input_ids, valid, protected, method, schedule, cache, observers=observers)
    hidden, positions, valid = out.hidden, out.state.positions, out.state.valid
    if logits == "last":
        idx = last_index(valid)
        hidden, positions, valid = gather_last(hidden, valid), positions.gather(1, idx), valid.gather(1, idx)
    n_input = attention_mask.bool().sum(1) if attention_mask is not None else \
        torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
    shape = None if is_mamba_ssm_model(model) else ModelShape.from_hf_config(model.config)
    flops = realised_flops_reduction(out.tokens_per_layer.cpu(), n_input.cpu(), shape, logits)
    result = ReducedOutput(_logits(model, hidden), positions, valid, out.tokens_per_layer, n_input, flops, hidden, cache)
    if info is not None:
        info.last = result
    return result


@contextmanager
def observing(model: nn.Module, *observers: ReductionObserver) -> Iterator[nn.Module]:
    """Attach ``observers`` to a patched model's reductions for the block (timing, token flow)."""
    info = get_patch(model)
    if info is None:
        raise ValueError("observing(): the model is not patched")
    info.observers.extend(observers)
    try:
        yield model
    finally:
        for observer in observers:
            info.observers.remove(observer)


# ------------------------------------------------------------------------------------------ patching
class ReducedForwardMixin:
    """``forward`` of a patched model: reduce during full-sequence forwards, decode steps run unreduced."""

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        cache: Any = None,
        labels: Optional[Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: int | Tensor = 0,
        protected: Optional[Tensor] = None,
        **kwargs: Any,
    ):
        info: PatchInfo = getattr(self, _ATTR)
        if _cache_has_state(cache):
            # Decode steps (new tokens on top of a reduced prefill's cache) run unreduced.
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, cache=cache,
                labels=labels, output_hidden_states=output_hidden_states, return_dict=return_dict,
                use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs,
            )
        if output_hidden_states or not isinstance(logits_to_keep, int):
            raise NotImplementedError(
                "a patched model does not support output_hidden_states or tensor logits_to_keep; unpatch it first"
            )
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        ref = input_ids if input_ids is not None else inputs_embeds
        valid = (torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device) if attention_mask is None
                 else attention_mask.bool())
        keep_last = max(logits_to_keep, 1 if cache is not None else 0)
        if keep_last:
            # the tokens whose logits are asked for (generation prefill: the last prompt token predicts the next
            # one) must survive as themselves
            protected = protect_last(valid, keep_last, protected)
        out = drive_backbone(self, input_ids, valid, protected, info.method, info.schedule, cache, inputs_embeds,
                             observers=info.observers)
        hidden, positions, valid = out.hidden, out.state.positions, out.state.valid
        if logits_to_keep > 0:
            idx = last_index(valid, logits_to_keep)
            hidden = gather_last(hidden, valid, logits_to_keep)
            positions, valid = positions.gather(1, idx), valid.gather(1, idx)
        logits = _logits(self, hidden)
        loss = None
        if labels is not None:
            nxt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
            target = torch.gather(nxt, 1, positions.clamp(min=0)).masked_fill(~valid, -100)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        return ReducedCausalLMOutput(
            loss=loss, logits=logits, cache=cache, positions=positions, valid=valid, tokens_per_layer=out.tokens_per_layer
        )


_PATCHED_CLASSES: dict[type, type] = {}


class ReducedMambaForCausalLM(ReducedForwardMixin, MambaForCausalLM):
    pass


class ReducedMamba2ForCausalLM(ReducedForwardMixin, Mamba2ForCausalLM):
    pass


_PATCHED_CLASSES[MambaForCausalLM] = ReducedMambaForCausalLM
_PATCHED_CLASSES[Mamba2ForCausalLM] = ReducedMamba2ForCausalLM


def _patched_class(cls: type) -> type:
    if cls not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[cls] = type(f"Reduced{cls.__name__}", (ReducedForwardMixin, cls), {})
    return _PATCHED_CLASSES[cls]


def patch(model: nn.Module, method: Any, schedule: Schedule) -> nn.Module:
    """Make ``model`` reduce tokens with ``method`` at ``schedule``; patching again replaces both."""
    if is_mamba_ssm_model(model):  # no HF forward to swap: reduced_forward reads the patch info
        setattr(model, _ATTR, PatchInfo(method=method, schedule=schedule, original_class=type(model)))
        return model
    if getattr(model, "backbone", None) is None or not hasattr(model.backbone, "layers"):
        raise TypeError(f"patch() expects a HF Mamba/Mamba-2 causal LM, got {type(model).__name__}")
    bad = [l for l in schedule.locations if not 0 <= l < len(model.backbone.layers) - 1]
    if bad:
        from tor_exp.errors import ConfigError

        raise ConfigError(f"reduction.locations={schedule.locations}: {bad} outside [0, {len(model.backbone.layers) - 2}]")
    info = get_patch(model)
    original = info.original_class if info is not None else model.__class__
    setattr(model, _ATTR, PatchInfo(method=method, schedule=schedule, original_class=original))
    model.__class__ = _patched_class(original)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch` (no-op on an unpatched model)."""
    info = get_patch(model)
    if info is not None:
        if model.__class__ is not info.original_class:
            model.__class__ = info.original_class
        delattr(model, _ATTR)
    return model


def is_patched(model: nn.Module) -> bool:
    return get_patch(model) is not None
