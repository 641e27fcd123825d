"""Capturing the per-token output a method ranks tokens on (METHOD.md §1: the importance source ``ssm_out``).

Each adapter knows its layers' mixer kind and picks one of these in
:meth:`~tor_exp.models.adapter.ModelAdapter.capture_ranking`; nothing here guesses the kind from the module.

* :func:`capture_input`: a forward pre-hook storing a submodule's input — a Mamba-2 mixer's gated RMSNorm, called
  as ``norm(y, gate)`` (y with its D skip, before the gate and out_proj), or a short convolution's ``out_proj``.
* :func:`capture_mamba2`: that pre-hook on a Mamba-2 mixer's ``norm``; a mixer whose ``norm`` is an
  ``nn.Identity`` (Falcon-H1 with ``mamba_rms_norm: false``) gates y right after its scan instead, which only a
  rebinding of its modeling module's scans reaches (:mod:`tor_exp.compat.transformers_mixers`).
* :func:`capture_mamba1`: a Mamba-1 mixer gates y inside its selective scan: the compat rebinding again.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator

from torch import Tensor, nn

from tor_exp.compat.transformers_mixers import capturing_mamba1_scan, capturing_mamba2_scans

#: the feature name methods ask for (``needed_features``) and the loop reads
RANKING_FEATURE = "ssm_out"


@contextmanager
def capture_input(module: nn.Module, store: dict[str, Tensor], key: str = RANKING_FEATURE) -> Iterator[None]:
    """Put the first input of ``module``'s next call into ``store[key]`` (a forward pre-hook, removed after)."""
    handle = module.register_forward_pre_hook(lambda _m, args: store.__setitem__(key, args[0]))
    try:
        yield
    finally:
        handle.remove()


def capture_mamba2(mixer: nn.Module, store: dict[str, Tensor], enabled: bool = True) -> ContextManager[None]:
    """y ([B, L, H·P]) of a Mamba-2 mixer's next forward, before its gate, into ``store["ssm_out"]``."""
    if not enabled:
        return nullcontext()
    if isinstance(mixer.norm, nn.Identity):  # no gated norm: the gate follows the scan
        return capturing_mamba2_scans(mixer, store, RANKING_FEATURE)
    return capture_input(mixer.norm, store)


def capture_mamba1(mixer: nn.Module, store: dict[str, Tensor], enabled: bool = True,
                   by_head: bool = False) -> ContextManager[None]:
    """y ([B, L, D']) of a Mamba-1 mixer's next forward, before its gate, into ``store["ssm_out"]``; ``by_head``:
    the mixer scans each head with its own call (Zamba)."""
    if not enabled:
        return nullcontext()
    return capturing_mamba1_scan(mixer, store, RANKING_FEATURE, by_head=by_head)
