"""The one backbone loop: embeddings → blocks (reducing at the schedule's locations) → final norm → LM head.

Shaped like mamba_ssm's ``Block``: between blocks the sequence is two streams, ``hidden`` (the last block's output)
and ``residual`` (the running sum that block saw), and each family's adapter provides one
``step(model, index, block, hidden, residual, inp) -> StepOutput`` (:mod:`tor_exp.models.adapter`). Blocks that
return a single sum (HF hybrid decoder layers) hand back ``residual=None``; at a reduction location their update
``output − input`` becomes the hidden stream and their input the residual stream (METHOD.md §7). At a location the
two streams are exactly what METHOD.md §0 hands a method as a :class:`TokenState`, so every family shares this
loop, the reduction call and the bookkeeping (positions, padding, per-layer token counts, observers, the decode
bookkeeping of hybrid caches). :func:`forward` adds the LM head: it is what the patched model, ``reduced_forward``
and the benchmarks call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from tor_exp.models.adapter import DecodeState, LayerInput, decode_state, first_real_column
from tor_exp.models.families import adapter_of, model_shape
from tor_exp.models.locations import importance_sources, location_keep
from tor_exp.models.tokens import gather_last, last_index
from tor_exp.reduction.base import ReductionObserver, run_reduction
from tor_exp.reduction.state import TokenState


@dataclass
class BackboneOutput:
    """Final normed hidden states [B, N', D], the token state after the last reduction (positions, valid,
    sizes of the surviving tokens), tokens entering each layer [B, L]."""

    hidden: Tensor
    state: TokenState
    tokens_per_layer: Tensor


def _locations(method: Any, schedule: Any) -> set[int]:
    return set(schedule.locations) if (method is not None and schedule is not None) else set()


def drive_backbone(
    model: nn.Module,
    input_ids: Optional[Tensor] = None,
    attention_mask: Optional[Tensor] = None,
    protected: Optional[Tensor] = None,
    method: Any = None,
    schedule: Any = None,
    cache: Any = None,
    inputs_embeds: Optional[Tensor] = None,
    observers: Sequence[ReductionObserver] = (),
    decoding: Optional[DecodeState] = None,
) -> BackboneOutput:
    """Run the backbone, reducing with ``method`` after each block in ``schedule.locations``.

    ``method=None`` runs the plain model (positions = arange). Padding (``attention_mask`` 0) and ``protected``
    tokens are unreducible; a cache (generation prefill) receives each layer's state of the sequence it saw.
    ``decoding``: a decode step of a hybrid on top of a filled cache (its key bookkeeping and next positions).
    """
    adapter = adapter_of(model)
    h = adapter.embed(model, input_ids) if inputs_embeds is None else adapter.given_embeddings(model, inputs_embeds)
    batch, length = h.shape[:2]
    valid = (torch.ones(batch, length, dtype=torch.bool, device=h.device) if attention_mask is None
             else attention_mask.to(h.device).bool())
    state = TokenState.initial(h, h, valid=valid, protected=None if protected is None else protected.to(h.device),
                               streams=adapter.streams(model, h))
    locations = _locations(method, schedule)
    order = sorted(locations)
    sources: dict[int, int] = {}
    if locations and "ssm_out" in (getattr(method, "needed_features", None) or set()):
        sources = importance_sources(method, schedule, model_shape(model))  # the layers whose parts rank
    capture_at = set(sources.values())
    bookkeeping = None
    offset = None
    if adapter.hybrid:
        if decoding is not None:
            bookkeeping = decoding
        elif cache is not None:
            bookkeeping = decode_state(cache, create=True)
            bookkeeping.key_valid.clear()
            bookkeeping.next_position = valid.sum(dim=1)
        offset = first_real_column(valid)

    def segment_positions() -> Optional[Tensor]:
        """Each token's original position among its row's real tokens (hybrids): fixed between reductions."""
        if offset is None:
            return None
        if decoding is not None:
            return decoding.next_position[:, None] + torch.arange(length, device=h.device)[None, :]
        return (state.positions - offset[:, None]).clamp(min=0)

    # re-read only where a reduction can change them (one sync per location): the token state is the same for
    # every layer of a segment, and so is what a step derives from it (LayerInput.segment)
    all_valid = bool(state.valid.all())
    positions, segment = segment_positions(), {}
    hidden, residual, counts = h, None, []
    captured: dict[int, Tensor] = {}
    for layer, block in enumerate(adapter.blocks(model)):
        counts.append(state.valid.sum(dim=1))
        out = adapter.step(model, layer, block, hidden, residual, LayerInput(
            valid=state.valid, all_valid=all_valid, positions=positions, streams=state.streams, cache=cache,
            want_ssm=layer in capture_at, bookkeeping=bookkeeping, decode=decoding is not None, segment=segment))
        hidden, residual = out.hidden, out.residual
        if layer in capture_at:
            captured[layer] = out.features["ssm_out"]
        if layer in locations:
            if residual is None:  # a single-stream block: its update is the hidden stream
                block_input = out.features["block_input"]
                hidden, residual = hidden - block_input, block_input
            features = {"mixer_out": hidden, "residual": residual}
            if layer in sources:
                features["ssm_out"] = captured.pop(sources[layer])
            state = state.replace(hidden=hidden, residual=residual)
            keep = location_keep(schedule, order.index(layer), state, method.max_fraction)
            state = run_reduction(method, state, features, keep, layer, observers)
            hidden, residual = state.hidden, state.residual
            all_valid = bool(state.valid.all())
            positions, segment = segment_positions(), {}
    if decoding is not None:
        decoding.next_position = decoding.next_position + length
    return BackboneOutput(adapter.final_norm(model, hidden, residual), state, torch.stack(counts, dim=1))


@dataclass
class ForwardOutput:
    """What :func:`forward` returns: logits [B, N', V] at the surviving tokens (or each row's last ``k`` real
    tokens), their positions [B, N'] (original column, -1 at padding) and validity, tokens entering each layer
    [B, L], the final normed hidden states of the returned rows and the cache it filled (or None)."""

    logits: Tensor
    positions: Tensor
    valid: Tensor
    tokens_per_layer: Tensor
    hidden: Tensor
    cache: Any = None


def forward(
    model: nn.Module,
    input_ids: Optional[Tensor],
    valid: Optional[Tensor] = None,
    protected: Optional[Tensor] = None,
    logits: str | int = "all",
    *,
    method: Any = None,
    schedule: Any = None,
    cache: Any = None,
    inputs_embeds: Optional[Tensor] = None,
    observers: Sequence[ReductionObserver] = (),
    float_logits: bool = True,
) -> ForwardOutput:
    """Backbone (reducing per ``method``/``schedule``) + LM head: the one forward of every entry point.

    ``logits``: ``"all"`` (every surviving token), ``"last"`` or an int k (each row's last k surviving tokens:
    protect them when they must be the last input tokens themselves, :func:`~tor_exp.models.tokens.protect_last`).
    ``float_logits=False`` keeps the head's dtype (benchmarks of large vocabularies).
    """
    if logits not in ("all", "last") and not (isinstance(logits, int) and logits > 0):
        raise ValueError(f"logits={logits!r}: must be 'all', 'last' or a positive int")
    out = drive_backbone(model, input_ids, valid, protected, method, schedule, cache, inputs_embeds, observers)
    hidden, positions, kept = out.hidden, out.state.positions, out.state.valid
    if logits != "all":
        k = 1 if logits == "last" else int(logits)
        idx = last_index(kept, k)
        hidden, positions, kept = gather_last(hidden, kept, k), positions.gather(1, idx), kept.gather(1, idx)
    head = adapter_of(model).logits(model, hidden, float_logits)
    return ForwardOutput(head, positions, kept, out.tokens_per_layer, hidden, cache)


def decode(model: nn.Module, input_ids: Tensor, cache: Any) -> Tensor:
    """One unreduced decode step of a hybrid on top of a (reduced) prefill's cache: logits [B, T, V].

    Each attention layer attends to the real slots of its own cached sequence plus the new tokens, at their original
    positions (the prompt's real length onwards), which HF's own decode step cannot know after a reduction.
    """
    bookkeeping = decode_state(cache)
    if bookkeeping is None:
        raise ValueError("decode(): the cache was not filled by a tor_exp prefill")
    out = drive_backbone(model, input_ids, cache=cache, decoding=bookkeeping)
    return adapter_of(model).logits(model, out.hidden)
