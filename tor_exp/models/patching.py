"""Token reduction inside a HF causal LM of any supported family, in the spirit of ToMe's ``tome.patch.timm(model)``.

``patch(model, method, schedule)`` swaps the model's class for a subclass whose ``forward`` runs the one backbone
loop (:func:`tor_exp.models.backbone.forward`), so hidden states, the residual stream, the padding mask and the
original positions shrink together (a forward hook on a block cannot shrink the mask). The model stays a HF
model: ``generate`` works (see :mod:`tor_exp.models.generation`) and ``unpatch`` restores the original class
exactly. :func:`reduced_forward` is the functional form, for every family and backend.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from tor_exp.models.backbone import decode, forward
from tor_exp.models.families import adapter_of, model_shape
from tor_exp.models.flops import realised_flops_reduction
from tor_exp.models.locations import check_depth, importance_sources
from tor_exp.models.tokens import protect_last
from tor_exp.reduction.base import ReductionObserver

_ATTR = "_tor_exp_patch"


@dataclass
class PatchInfo:
    method: Any
    schedule: Any  # tor_exp.models.schedule.Schedule
    original_class: type
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
    schedule: Any = None,
    cache: Any = None,
) -> ReducedOutput:
    """Forward with the patched reduction (or ``method``/``schedule`` given here; neither ⇒ plain model).

    ``protected`` [B, N] bool marks tokens that must survive unchanged (e.g. scored continuation tokens);
    padding (``attention_mask`` 0) is never reduced and never affects other rows. ``logits="last"`` gives each
    row's last surviving token only: protect it (:func:`~tor_exp.models.tokens.protect_last`) when it must be
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
    out = forward(model, input_ids, valid, protected, logits, method=method, schedule=schedule, cache=cache,
                  observers=observers)
    n_input = valid.sum(1)
    flops = realised_flops_reduction(out.tokens_per_layer.cpu(), n_input.cpu(), model_shape(model), logits)
    return ReducedOutput(out.logits, out.positions, out.valid, out.tokens_per_layer, n_input, flops, out.hidden,
                         cache)


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
        adapter = adapter_of(self)
        if adapter.cache_has_state(cache):
            # Decode steps (new tokens on top of a reduced prefill's cache) run unreduced: HF's own step for the
            # SSM families (a state has no positions), the loop's decode for hybrids (positions, key slots).
            if adapter.hybrid:
                ids = input_ids if input_ids is not None else None
                return ReducedCausalLMOutput(logits=decode(self, ids, cache), cache=cache)
            return adapter.decode_step(
                self, info.original_class, input_ids, cache, attention_mask=attention_mask,
                inputs_embeds=inputs_embeds, labels=labels, output_hidden_states=output_hidden_states,
                return_dict=return_dict, logits_to_keep=logits_to_keep, **kwargs,
            )
        if output_hidden_states or not isinstance(logits_to_keep, int):
            raise NotImplementedError(
                "a patched model does not support output_hidden_states or tensor logits_to_keep; unpatch it first"
            )
        if use_cache and cache is None:
            cache = adapter.new_cache(self)
        ref = input_ids if input_ids is not None else inputs_embeds
        valid = (torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device) if attention_mask is None
                 else attention_mask.bool())
        keep_last = max(logits_to_keep, 1 if cache is not None else 0)
        if keep_last:
            # the tokens whose logits are asked for (generation prefill: the last prompt token predicts the next
            # one) must survive as themselves
            protected = protect_last(valid, keep_last, protected)
        out = forward(self, input_ids, valid, protected, logits_to_keep if logits_to_keep > 0 else "all",
                      method=info.method, schedule=info.schedule, cache=cache, inputs_embeds=inputs_embeds,
                      observers=info.observers)
        loss = None
        if labels is not None:
            nxt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
            target = torch.gather(nxt, 1, out.positions.clamp(min=0)).masked_fill(~out.valid, -100)
            loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        return ReducedCausalLMOutput(loss=loss, logits=out.logits, cache=cache, positions=out.positions,
                                     valid=out.valid, tokens_per_layer=out.tokens_per_layer)


_PATCHED_CLASSES: dict[type, type] = {}


def _patched_class(cls: type) -> type:
    if cls not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[cls] = type(f"Reduced{cls.__name__}", (ReducedForwardMixin, cls), {})
    return _PATCHED_CLASSES[cls]


def patch(model: nn.Module, method: Any, schedule: Any) -> nn.Module:
    """Make ``model`` reduce tokens with ``method`` at ``schedule``; patching again replaces both."""
    try:
        adapter = adapter_of(model)
    except TypeError as err:
        raise TypeError(f"patch() expects a causal LM of a supported family: {err}") from None
    n_layer = adapter.num_layers(model)
    check_depth("reduction.locations", schedule.locations, n_layer)
    importance_sources(method, schedule, adapter.shape(model))  # a location with nothing to rank on: refused here
    info = get_patch(model)
    original = info.original_class if info is not None else model.__class__
    setattr(model, _ATTR, PatchInfo(method=method, schedule=schedule, original_class=original))
    if adapter.hf_model:  # mamba_ssm's model has no HF forward to swap: reduced_forward reads the patch info
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
