"""Capturing the SSM output y of a Mamba mixer during its forward (METHOD.md §1: the importance source).

Mamba-2-style mixers (Mamba-2, and the Mamba-2 mixers of every hybrid) end with a gated RMSNorm called as
``norm(y, gate)``: a forward pre-hook on it sees y, D-skip included, before the gate and out_proj. Mamba-1-style
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


@contextmanager
def capture_ssm_out(mixer: nn.Module, store: dict[str, Tensor], enabled: bool = True) -> Iterator[None]:
    """Put the SSM output y ([B, L, D']) of ``mixer``'s next forward into ``store["ssm_out"]``."""
    if not enabled:
        yield
        return
    norm = getattr(mixer, "norm", None)
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
