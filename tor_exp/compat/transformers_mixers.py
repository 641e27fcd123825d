"""Reading a Mamba mixer's y before its gate where HF's modeling code offers no module to hook.

Written against transformers 5.24 and 5.25. A Mamba-1-style mixer (Mamba, Falcon-Mamba, Jamba, Zamba) gates y inside
its selective-scan function, which the modeling module calls by its module-level name :data:`MAMBA1_SCAN` (Zamba
once per head); a Mamba-2 mixer without a gated norm (Falcon-H1 with ``mamba_rms_norm: false``) gates y right
after its scans :data:`MAMBA2_SCANS`. For the duration of one call those names are rebound to wrappers that run the
scan with ``z=None``, store y and apply the gate ``y·silu(z)`` afterwards (the operations HF performs). transformers
5.25 binds these names to ``kernels`` ``Func`` modules, 5.24 to plain functions: the wrappers call whatever is bound,
so both work. :func:`missing_symbols` lists what a modeling module lacks (the compat test calls it for every family).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the transformers releases these patches were written against
WRITTEN_AGAINST = ("5.24", "5.25")
#: the Mamba-1 selective scan (prefill and decode), called by this name in the mixer's modeling module
MAMBA1_SCAN = "mamba_selective_scan"
#: the Mamba-2 chunked scan (prefill; [B, L, H, P], with the final state when asked) and the one-token state
#: update (decode; [B, H, P])
MAMBA2_SCANS = ("mamba2_chunk_scan", "mamba2_selective_state_update")


def modeling_module(mixer: nn.Module) -> ModuleType:
    """The HF modeling module that defines ``mixer``'s class (where its scans are looked up by name)."""
    return sys.modules[type(mixer).__module__]


def missing_symbols(module: ModuleType, names: tuple[str, ...]) -> list[str]:
    """The ``names`` that ``module`` does not define (a transformers upgrade renamed or removed them)."""
    return [name for name in names if getattr(module, name, None) is None]


def _require(mixer: nn.Module, names: tuple[str, ...]) -> ModuleType:
    module = modeling_module(mixer)
    missing = missing_symbols(module, names)
    if missing:
        raise TypeError(f"cannot capture ssm_out from {type(mixer).__name__}: {module.__name__} has no "
                        f"{', '.join(missing)} (tor_exp.compat.transformers_mixers was written against "
                        f"transformers {' / '.join(WRITTEN_AGAINST)})")
    return module


@contextmanager
def capturing_mamba1_scan(mixer: nn.Module, store: dict[str, Tensor], key: str = "ssm_out",
                          by_head: bool = False) -> Iterator[None]:
    """Put y ([B, L, D']) of the Mamba-1 ``mixer``'s next scan into ``store[key]``. ``by_head``: the mixer scans
    each of its heads with a call of its own, in channel order (Zamba's multi-head Mamba): y is the calls' outputs
    concatenated along the channels."""
    module = _require(mixer, (MAMBA1_SCAN,))
    original = getattr(module, MAMBA1_SCAN)
    heads: list[Tensor] = []

    def scan_capturing(*args, z=None, return_last_state=False, **kwargs):
        result = original(*args, z=None, return_last_state=return_last_state, **kwargs)
        y, last = result if return_last_state else (result, None)
        heads.append(y.transpose(1, 2))
        store[key] = torch.cat(heads, dim=-1) if by_head else heads.pop()
        if z is not None:
            y = y * F.silu(z)
        return (y, last) if return_last_state else y

    setattr(module, MAMBA1_SCAN, scan_capturing)
    try:
        yield
    finally:
        setattr(module, MAMBA1_SCAN, original)


@contextmanager
def capturing_mamba2_scans(mixer: nn.Module, store: dict[str, Tensor], key: str = "ssm_out") -> Iterator[None]:
    """Put y ([B, L, H·P]) of the Mamba-2 ``mixer``'s next scan (chunked or one-token) into ``store[key]``."""
    module = _require(mixer, MAMBA2_SCANS)
    chunk_scan, state_update = (getattr(module, name) for name in MAMBA2_SCANS)

    def chunk_scan_capturing(*args, z=None, **kwargs):
        result = chunk_scan(*args, z=None, **kwargs)
        y, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        store[key] = y.reshape(*y.shape[:2], -1)
        if z is not None:
            y = y * F.silu(z)
        return (y, *rest) if isinstance(result, tuple) else y

    def state_update_capturing(*args, z=None, **kwargs):
        y = state_update(*args, z=None, **kwargs)
        store[key] = y.reshape(y.shape[0], 1, -1)
        return y if z is None else y * F.silu(z)

    for name, wrapped in zip(MAMBA2_SCANS, (chunk_scan_capturing, state_update_capturing)):
        setattr(module, name, wrapped)
    try:
        yield
    finally:
        setattr(module, MAMBA2_SCANS[0], chunk_scan)
        setattr(module, MAMBA2_SCANS[1], state_update)
