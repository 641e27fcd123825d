"""Token reduction inside a HF Mamba / Mamba-2 causal LM, in the spirit of ToMe's ``tome.patch.timm(model)``.

``patch(model, method, schedule)`` swaps the model's class for a subclass whose ``forward`` drives the backbone
itself (embeddings → blocks → ``norm_f`` → ``lm_head``), so hidden states, the residual stream, the padding
mask and the original positions shrink together (a forward hook on a block cannot shrink the mask, NOTES.md).
Every block is computed as HF does — ``residual (+fp32) + mixer(norm(h))`` — but at a reduction location the
two streams are kept apart, handed to ``method.reduce`` as a :class:`TokenState`, and added afterwards.
The model stays a HF model: ``generate`` works (see :mod:`tor_exp.models.generation`) and ``unpatch``
restores the original class exactly.
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
from transformers.models.mamba import modeling_mamba
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
from transformers.utils import ModelOutput

from tor_exp.models.flops import ModelShape, Schedule, realised_flops_reduction
from tor_exp.models.mamba_ssm_backend import is_mamba_ssm_model, mamba_ssm_reduced_forward
from tor_exp.reduction.base import run_reduction
from tor_exp.reduction.merge import Observer
from tor_exp.reduction.state import TokenState

_ATTR = "_tor_exp_patch"


@dataclass
class PatchInfo:
    method: Any
    schedule: Schedule
    original_class: type
    last: Optional["ReducedOutput"] = None  # bookkeeping of the latest reduced forward (FLOPs, counts)
    observers: list[Observer] = field(default_factory=list)  # called after every reduction (see observing)


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


# ------------------------------------------------------------------------------------------- ssm_out capture
@contextmanager
def capture_ssm_out(mixer: nn.Module, store: dict[str, Tensor], enabled: bool = True) -> Iterator[None]:
    """Capture the SSM output y ([B, L, D'], D-skip included, before the gate / gated norm / out_proj).

    Mamba-2: a forward pre-hook on ``mixer.norm`` (args[0] is y, args[1] the gate). Mamba-1: HF's scan gates y
    itself, so the module-level scan function is wrapped for the duration of the call: it is called with
    ``z=None`` and the gate ``y·silu(z)`` is applied afterwards, the same operations HF performs.
    """
    if not enabled:
        yield
        return
    if isinstance(mixer, Mamba2Mixer):
        handle = mixer.norm.register_forward_pre_hook(lambda _m, args: store.__setitem__("ssm_out", args[0]))
        try:
            yield
        finally:
            handle.remove()
        return
    if isinstance(mixer, modeling_mamba.MambaMixer):
        original = modeling_mamba.mamba_selective_scan

        def scan_capturing(*args, z=None, return_last_state=False, **kwargs):
            result = original(*args, z=None, return_last_state=return_last_state, **kwargs)
            y, last = result if return_last_state else (result, None)
            store["ssm_out"] = y.transpose(1, 2)
            if z is not None:
                y = y * F.silu(z)
            return (y, last) if return_last_state else y

        modeling_mamba.mamba_selective_scan = scan_capturing
        try:
            yield
        finally:
            modeling_mamba.mamba_selective_scan = original
        return
    raise TypeError(f"cannot capture ssm_out from {type(mixer).__name__}")


# -------------------------------------------------------------------------------------------- helpers
def _gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(x, 1, idx.view(idx.shape + (1,) * (x.dim() - 2)).expand(idx.shape + x.shape[2:]))


def right_align_order(valid: Tensor) -> Tensor:
    """[B, N] permutation that moves every row's real tokens to the end (in order): a left-padded layout."""
    return torch.sort(valid.to(torch.int8), dim=1, stable=True).indices


def last_valid_index(valid: Tensor) -> Tensor:
    """[B] column of each row's last real token (0 for an all-padding row)."""
    cols = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    return torch.where(valid, cols, -1).max(dim=1).values.clamp(min=0)


def _cache_has_state(cache: Any) -> bool:
    if cache is None:
        return False
    try:
        return bool(cache.has_previous_state())
    except (ValueError, IndexError, AttributeError):
        return False


def _run_mixer(block: nn.Module, normed: Tensor, valid: Tensor, all_valid: bool, cache: Any, want_ssm: bool):
    """Mixer of one block on the current (possibly right-padded) tokens; returns (mixer_out, ssm_out | None).

    ``all_valid`` (no padding) is passed in rather than read from ``valid`` here, which would force a device
    sync in every layer. With a cache (generation prefill) rows are first left-aligned, so each layer's final
    conv window and SSM state are those of its real tokens (zeroed leading padding leaves both untouched),
    then put back.
    """
    mask = None if all_valid else valid
    order = inverse = None
    if cache is not None and mask is not None:
        order = right_align_order(valid)
        inverse = torch.argsort(order, dim=1)
        normed, mask = _gather_tokens(normed, order), torch.gather(valid, 1, order)
    store: dict[str, Tensor] = {}
    with capture_ssm_out(block.mixer, store, enabled=want_ssm):
        out = block.mixer(normed, cache=cache, attention_mask=mask)
    ssm = store.get("ssm_out")
    if order is not None:
        out = _gather_tokens(out, inverse)
        ssm = _gather_tokens(ssm, inverse) if ssm is not None else None
    return out, ssm


# ---------------------------------------------------------------------------------------------- driver
def drive_backbone(
    model: nn.Module,
    input_ids: Optional[Tensor] = None,
    attention_mask: Optional[Tensor] = None,
    protected: Optional[Tensor] = None,
    method: Any = None,
    schedule: Optional[Schedule] = None,
    cache: Any = None,
    inputs_embeds: Optional[Tensor] = None,
) -> tuple[Tensor, TokenState, Tensor]:
    """Run embeddings → blocks (reducing at the schedule's locations) → ``norm_f``.

    Returns the final normed hidden states [B, N', D], the final token state (positions / valid / sizes)
    and tokens_per_layer [B, L]. ``method=None`` runs the plain model (positions = arange).
    """
    backbone = model.backbone
    h = backbone.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
    batch, length = h.shape[:2]
    valid = (torch.ones(batch, length, dtype=torch.bool, device=h.device) if attention_mask is None
             else attention_mask.to(h.device).bool())
    state = TokenState.initial(h, h, valid=valid, protected=None if protected is None else protected.to(h.device))
    locations = set(schedule.locations) if (method is not None and schedule is not None) else set()
    keep_ratio = schedule.keep_ratio if schedule is not None else 1.0
    need = set(getattr(method, "needed_features", set()) or set()) if method is not None else set()
    observers = info.observers if (info := get_patch(model)) is not None else []
    counts = []
    all_valid = bool(state.valid.all())  # re-read only where a reduction can change it
    for layer, block in enumerate(backbone.layers):
        counts.append(state.valid.sum(dim=1))
        residual = h.to(torch.float32) if block.residual_in_fp32 else h
        normed = block.norm(h.to(dtype=block.norm.weight.dtype))
        reduce_here = layer in locations
        mixer_out, ssm_out = _run_mixer(block, normed, state.valid, all_valid, cache,
                                        reduce_here and "ssm_out" in need)
        if reduce_here:
            state = state.replace(hidden=mixer_out, residual=residual)
            features = {"mixer_out": mixer_out, "residual": residual}
            if ssm_out is not None:
                features["ssm_out"] = ssm_out
            state = run_reduction(method, state, features, keep_ratio, layer, observers)
            mixer_out, residual = state.hidden, state.residual
            all_valid = bool(state.valid.all())
        h = residual + mixer_out
    state = state.replace(hidden=h, residual=h)
    return backbone.norm_f(h), state, torch.stack(counts, dim=1)


def _logits(model: nn.Module, hidden: Tensor) -> Tensor:
    return model.lm_head(hidden.to(model.lm_head.weight.dtype)).float()


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
    padding (``attention_mask`` 0) is never reduced and never affects other rows.
    """
    if logits not in ("all", "last"):
        raise ValueError(f"logits={logits!r}: must be 'all' or 'last'")
    info = get_patch(model)
    if method is None and info is not None:
        method, schedule = info.method, (schedule or info.schedule)
    if is_mamba_ssm_model(model):  # backend: mamba_ssm (GPU only, untested here)
        full, state, counts = mamba_ssm_reduced_forward(model, input_ids, method, schedule, attention_mask, protected)
        positions, valid = state.positions, state.valid
        if logits == "last":
            idx = last_valid_index(valid)[:, None]
            full, positions, valid = _gather_tokens(full, idx), torch.gather(positions, 1, idx), torch.gather(valid, 1, idx)
        n_input = (attention_mask.bool().sum(1) if attention_mask is not None
                   else torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device))
        return ReducedOutput(full, positions, valid, counts, n_input, realised_flops_reduction(counts.cpu(), n_input.cpu()))
    hidden, state, counts = drive_backbone(model, input_ids, attention_mask, protected, method, schedule, cache)
    positions, valid = state.positions, state.valid
    if logits == "last":
        idx = last_valid_index(valid)[:, None]
        hidden = _gather_tokens(hidden, idx)
        positions, valid = torch.gather(positions, 1, idx), torch.gather(valid, 1, idx)
    n_input = (attention_mask.bool().sum(1) if attention_mask is not None
               else torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device))
    flops = realised_flops_reduction(counts.cpu(), n_input.cpu(), ModelShape.from_hf_config(model.config), logits)
    out = ReducedOutput(_logits(model, hidden), positions, valid, counts, n_input, flops, hidden, cache)
    if info is not None:
        info.last = out
    return out


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
        keep_last = max(logits_to_keep, 1 if cache is not None else 0)
        if keep_last:
            # Rows whose last logits are asked for (generation prefill: the last prompt token predicts the next
            # one) must keep those tokens as themselves.
            valid = (torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device) if attention_mask is None
                     else attention_mask.bool())
            from_end = valid.flip(1).cumsum(1).flip(1)
            last = valid & (from_end <= keep_last)
            protected = last if protected is None else (protected.bool() | last)
        hidden, state, counts = drive_backbone(
            self, input_ids, attention_mask, protected, info.method, info.schedule, cache, inputs_embeds
        )
        positions, valid = state.positions, state.valid
        if logits_to_keep > 0:
            # The last k real tokens of each row, whatever its padding side.
            order = right_align_order(valid)[:, -logits_to_keep:]
            hidden = _gather_tokens(hidden, order)
            positions, valid = torch.gather(positions, 1, order), torch.gather(valid, 1, order)
        logits = _logits(self, hidden)
        loss = None
        if labels is not None:
            nxt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
            target = torch.gather(nxt, 1, positions.clamp(min=0)).masked_fill(~valid, -100)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        return ReducedCausalLMOutput(
            loss=loss, logits=logits, cache=cache, positions=positions, valid=valid, tokens_per_layer=counts
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


@contextmanager
def observing(model: nn.Module, observer: Observer) -> Iterator[Observer]:
    """Call ``observer(location, before, plan, after)`` after every reduction of the patched ``model``."""
    info = get_patch(model)
    if info is None:
        raise ValueError("observing() needs a patched model: patch(model, method, schedule) first")
    info.observers.append(observer)
    try:
        yield observer
    finally:
        info.observers.remove(observer)
