"""Which kernel each part of a model's forward really runs: recorded in results.json and gpu_bench's summary.

Decided from what the code will call, not from whether a package imports: transformers' modeling modules bind
each kernel function (``mamba_chunk_scan_combined``, ``selective_state_update``, ``causal_conv1d_fn``, ...) at
import, to the package's implementation or to their torch reference, and hand inputs on a device the package
does not support (CPU) to the torch reference anyway; mamba_ssm's ``MambaLMHeadModel`` uses its Triton kernels
throughout but runs its convolution in torch when causal_conv1d is missing.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

#: transformers' kernel function name → the part of the forward it computes (the keys of :func:`kernels_used`)
_PARTS = {
    "mamba_chunk_scan_combined": "mamba2_scan",
    "selective_scan_fn": "mamba1_scan",
    "selective_state_update": "ssm_update",
    "causal_conv1d_fn": "causal_conv1d",
    "causal_conv1d_update": "conv_update",
}
#: how a package's implementation is named in the record
_PACKAGE_LABEL = {"mamba_ssm": "mamba_ssm triton", "causal_conv1d": "causal_conv1d cuda"}


def _closure(fn: Callable) -> dict[str, Any]:
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    if code is None:
        return {}
    out = {}
    for name, cell in zip(code.co_freevars, cells):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return out


def _fallback_wrapper(obj: Any) -> Optional[dict[str, Any]]:
    """The closure of transformers' ``use_kernel_func_from_hub_with_fallback`` wrapper behind ``obj`` (a plain
    function, or the ``kernels`` package's ``Func`` module around it), or None when ``obj`` is not one."""
    candidates = [obj]
    if isinstance(obj, nn.Module):  # kernels' Func module: the wrapper is the ``func`` its forward closes over
        candidates.append(_closure(type(obj).forward).get("func"))
    for fn in candidates:
        if fn is None:
            continue
        free = _closure(fn)
        if {"implementation", "torch_function", "func_name", "package"} <= free.keys():
            return free
    return None


def _hf_choice(free: dict[str, Any], device_type: str) -> str:
    if free["implementation"] is free["torch_function"]:
        return "torch"
    supported = free.get("supported_devices")
    if supported is not None and device_type not in supported:
        return "torch"
    return _PACKAGE_LABEL.get(free["package"], free["package"])


def hf_kernels(module_name: str, device_type: str) -> dict[str, str]:
    """Part → kernel for the transformers modeling module ``module_name`` on inputs of ``device_type``."""
    module = sys.modules.get(module_name)
    if module is None:
        return {}
    found: dict[str, str] = {}
    for value in vars(module).values():
        free = _fallback_wrapper(value)
        if free is None or free["func_name"] not in _PARTS:
            continue
        found[_PARTS[free["func_name"]]] = _hf_choice(free, device_type)
    return found


def _mamba_ssm_kernels(model: nn.Module) -> dict[str, str]:
    """mamba_ssm's ``MambaLMHeadModel``: Triton SSD / state update and norms; conv in torch without causal_conv1d."""
    mixer = model.backbone.layers[0].mixer
    module = sys.modules.get(type(mixer).__module__)
    conv = "causal_conv1d cuda" if getattr(module, "causal_conv1d_fn", None) is not None else "torch"
    fused_norm = bool(getattr(model.backbone, "fused_add_norm", False))
    if hasattr(mixer, "headdim"):  # Mamba2
        parts = {"mamba2_scan": "mamba_ssm triton", "ssm_update": "mamba_ssm triton"}
        if getattr(mixer, "use_mem_eff_path", False) and conv != "torch":
            parts["mamba2_scan"] = "mamba_ssm triton (fused with causal_conv1d)"
    else:
        parts = {"mamba1_scan": "mamba_ssm cuda", "ssm_update": "mamba_ssm triton"}
    return {**parts, "causal_conv1d": conv, "conv_update": conv,
            "rms_norm": "mamba_ssm triton" if fused_norm else "torch"}


def kernels_used(model: nn.Module, device: str | torch.device | None = None) -> dict[str, str]:
    """Part of the forward (``mamba2_scan``, ``mamba1_scan``, ``ssm_update``, ``causal_conv1d``, ``conv_update``,
    ``rms_norm``) → what runs it: ``torch``, ``mamba_ssm triton``, ``causal_conv1d cuda``, ... Only the parts the
    model's modeling code has. Never raises: an unreadable model gives ``{"unknown": <why>}``."""
    try:
        if type(model).__name__ == "MambaLMHeadModel":
            return _mamba_ssm_kernels(model)
        if device is None:
            device = next(model.parameters()).device
        device_type = torch.device(device).type
        found = hf_kernels(type(model).__module__, device_type)
        if found:
            found.setdefault("rms_norm", "torch")  # transformers' Mamba-2 / hybrid norms are torch modules
        return found
    except Exception as exc:  # noqa: BLE001 - a record must never fail over this
        return {"unknown": f"{type(exc).__name__}: {exc}"[:200]}
