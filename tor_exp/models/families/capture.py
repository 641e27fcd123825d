"""Capturing the SSM output y of a Mamba mixer during its forward (METHOD.md §1: the importance source).

Mamba-2-style mixers (Mamba-2, and the Mamba-2 mixers of every hybrid) end with a gated RMSNorm called as
``norm(y, gate)``: a forward pre-hook on it sees y, D-skip included, before the gate and out_proj. A Mamba-2-style
mixer whose ``norm`` is an ``nn.Identity`` (Falcon-H1 with ``mamba_rms_norm: false``) gates y as ``y·silu(gate)``
right after its scan instead: its modeling module's scan functions (:data:`MAMBA2_SCAN_FUNCTIONS`) are wrapped for
the duration of the call, as below. Mamba-1-style
mixers (Mamba, Falcon-Mamba, Jamba) gate y inside their selective-scan function, which their modeling module calls
by its module-level name: that name is wrapped for the duration of the call, the scan runs with ``z=None``, and the
gate ``y·silu(z)`` is applied afterwards (the same operations HF performs).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

SCAN_FUNCTION = "mamba_selective_scan"
#: Mamba-2 scans of a mixer without a gated norm, called by their module-level names: the chunked scan (prefill;
#: [B, L, H, P], with the final state when asked) and the one-token state update (decode; [B, H, P])
MAMBA2_SCAN_FUNCTIONS = ("mamba2_chunk_scan", "mamba2_selective_state_update")


@contextmanager
def capture_ssm_out(mixer: nn.Module, store: dict[str, Tensor], enabled: bool = True) -> Iterator[None]:
    """Put the SSM output y ([B, L, D']) of ``mixer``'s next forward into ``store["ssm_out"]``."""
    if not enabled:
        yield
        return
    norm = getattr(mixer, "norm", None)
    if isinstance(norm, nn.Identity) and getattr(mixer, "head_dim", None) is not None:  # Mamba-2, no gated norm
        with _capturing_mamba2_scans(mixer, store):
            yield
        return
    if isinstance(norm, nn.Module) and getattr(mixer, "head_dim", None) is not None:  # Mamba-2 style
        handle = norm.register_forward_pre_hook(lambda _m, args: store.__setitem__("ssm_out", args[0]))
        try:
            yield
        finally:
            handle.remove()
        return
    module = sys.modules[type(mixer).__module__]
    original = getattr(module, SCAN_FUNCTION, None)
    if original is None:
        raise TypeError(f"cannot capture ssm_out from {type(mixer).__name__}")

    def scan_capturing(*args, z=None, return_last_state=False, **kwargs):
        result = original(*args, z=None, return_last_state=return_last_state, **kwargs)
        y, last = result if return_last_state else (result, None)
        store["ssm_out"] = y.transpose(1, 2)
        if z is not None:
            y = y * F.silu(z)
        return (y, last) if return_last_state else y

    setattr(module, SCAN_FUNCTION, scan_capturing)
    try:
        yield
    finally:
        setattr(module, SCAN_FUNCTION, original)


@contextmanager
def _capturing_mamba2_scans(mixer: nn.Module, store: dict[str, Tensor]) -> Iterator[None]:
    """Wrap the Mamba-2 scans of ``mixer``'s modeling module: each runs with ``z=None``, its y is stored as
    [B, L, H·P] and the gate ``y·silu(z)`` (if the caller passed one) is applied afterwards."""
    module = sys.modules[type(mixer).__module__]
    chunk_scan, state_update = (getattr(module, name, None) for name in MAMBA2_SCAN_FUNCTIONS)
    if chunk_scan is None or state_update is None:
        raise TypeError(f"cannot capture ssm_out from {type(mixer).__name__}")

    def chunk_scan_capturing(*args, z=None, **kwargs):
        result = chunk_scan(*args, z=None, **kwargs)
        y, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        store["ssm_out"] = y.reshape(*y.shape[:2], -1)
        if z is not None:
            y = y * F.silu(z)
        return (y, *rest) if isinstance(result, tuple) else y

    def state_update_capturing(*args, z=None, **kwargs):
        y = state_update(*args, z=None, **kwargs)
        store["ssm_out"] = y.reshape(y.shape[0], 1, -1)
        return y if z is None else y * F.silu(z)

    for name, wrapped in zip(MAMBA2_SCAN_FUNCTIONS, (chunk_scan_capturing, state_update_capturing)):
        setattr(module, name, wrapped)
    try:
        yield
    finally:
        setattr(module, MAMBA2_SCAN_FUNCTIONS[0], chunk_scan)
        setattr(module, MAMBA2_SCAN_FUNCTIONS[1], state_update)
