"""HF transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` as a backend of the backbone loop.

HF blocks return the single sum ``residual + mixer(norm(h))``; :meth:`HFBackend.step` computes the same
operations but returns the two streams apart (METHOD.md §0), so a reduction can treat each its own way. It also
captures the SSM output y for methods that rank on it, and left-aligns padded rows before a mixer that fills a
cache, so every layer's conv window and SSM state are those of its real tokens.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.mamba import modeling_mamba
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from tor_exp.models.tokens import gather_tokens, right_align_order


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


class HFBackend:
    """Backend protocol of :mod:`tor_exp.models.backbone` for HF Mamba / Mamba-2 causal LMs."""

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        return model.backbone.embeddings(input_ids)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return model.backbone.layers

    def step(self, block: nn.Module, hidden: Tensor, residual: Optional[Tensor], valid: Tensor, all_valid: bool,
             cache: Any, want_ssm: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """HF's ``residual (+fp32) + mixer(norm(h))`` with the add of the previous block deferred to here.

        ``all_valid`` (no padding) is passed in rather than read from ``valid``, which would force a device sync
        in every layer.
        """
        h = hidden if residual is None else residual + hidden
        residual = h.to(torch.float32) if block.residual_in_fp32 else h
        normed = block.norm(h.to(dtype=block.norm.weight.dtype))
        mask = None if all_valid else valid
        order = inverse = None
        if cache is not None and mask is not None:
            order = right_align_order(valid)
            inverse = torch.argsort(order, dim=1)
            normed, mask = gather_tokens(normed, order), torch.gather(valid, 1, order)
        store: dict[str, Tensor] = {}
        with capture_ssm_out(block.mixer, store, enabled=want_ssm):
            out = block.mixer(normed, cache=cache, attention_mask=mask)
        features = {"mixer_out": out, "residual": residual}
        if "ssm_out" in store:
            features["ssm_out"] = store["ssm_out"]
        if order is not None:
            features = {k: gather_tokens(v, inverse) if k != "residual" else v for k, v in features.items()}
            out = features["mixer_out"]
        return out, residual, features

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Tensor) -> Tensor:
        return model.backbone.norm_f(residual + hidden)


HF = HFBackend()
