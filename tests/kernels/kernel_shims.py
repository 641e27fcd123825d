"""What it takes to run mamba_ssm's Triton kernels on CPU tensors under triton's interpreter (test support only).

Applied once, in the kernel suite's own process, before mamba_ssm and transformers' modeling modules are imported:

- ``TRITON_INTERPRET=1``: ``triton.jit`` reads it when a kernel is decorated (at mamba_ssm's import);
- a stub ``selective_scan_cuda`` module: mamba_ssm imports its compiled Mamba-1 scan at module level, and the sdist
  was built without CUDA extensions (calling it raises, saying so);
- ``torch.cuda.device(None)`` a no-op: every kernel wrapper enters ``torch.cuda.device(x.device.index)``, and a CPU
  tensor's index is None, which a CPU-only torch refuses;
- ``triton.autotune`` keeps one config: the interpreter has no driver to time configs on;
- transformers' table of the devices mamba_ssm runs on gains ``cpu``, so HF's modeling modules hand CPU tensors to
  mamba_ssm's kernels instead of their torch fallbacks (causal_conv1d stays CUDA-only: it is not installed);
- HF Mamba-1's prefill scan (``selective_scan_fn`` / ``mamba_inner_fn``) stays torch: it is the compiled CUDA
  extension, not Triton (its decode step, ``selective_state_update``, is Triton and runs).

Nothing here belongs in the tor_exp package: it makes a CPU pretend to be what the kernels expect.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types

#: modules that must not be imported before :func:`apply` (they bind the kernels, or the fallbacks, at import)
_TOO_EARLY = ("mamba_ssm", "transformers.models.mamba2.modeling_mamba2", "transformers.models.mamba.modeling_mamba",
              "transformers.models.bamba.modeling_bamba", "transformers.models.nemotron_h.modeling_nemotron_h")


def missing() -> str | None:
    """Why the kernels cannot run here (None when triton and mamba_ssm are importable)."""
    lacking = [name for name in ("triton", "mamba_ssm", "einops") if importlib.util.find_spec(name) is None]
    if lacking:
        return (f"{', '.join(lacking)} not importable: run `bash launchers/install_cpu_kernels.sh` and put .kernels on "
                "PYTHONPATH (docs/install.md, 'Kernel tests')")
    return None


def apply() -> None:
    """Install every shim; raises RuntimeError when a module that binds kernels at import was imported already."""
    early = [name for name in _TOO_EARLY if name in sys.modules]
    if early:
        raise RuntimeError(f"imported before the kernel shims: {early}; run the kernel suite in its own process")
    os.environ["TRITON_INTERPRET"] = "1"

    stub = types.ModuleType("selective_scan_cuda")

    def _not_built(*args, **kwargs):
        raise RuntimeError("selective_scan_cuda: mamba_ssm was built without its CUDA extension (CPU kernel tests)")

    stub.fwd = stub.bwd = _not_built
    sys.modules.setdefault("selective_scan_cuda", stub)

    import torch

    if not torch.cuda.is_available():
        original = torch.cuda.device

        class _Device(original):  # type: ignore[misc, valid-type]
            """torch.cuda.device that ignores a CPU tensor's device index (None)."""

            def __init__(self, device):
                self._noop = device is None or (isinstance(device, int) and device < 0)
                if not self._noop:
                    super().__init__(device)

            def __enter__(self):
                return None if self._noop else super().__enter__()

            def __exit__(self, *exc):
                return False if self._noop else super().__exit__(*exc)

        torch.cuda.device = _Device

    import triton

    autotune = triton.autotune

    def one_config(configs, *args, **kwargs):
        return autotune(list(configs)[:1], *args, **kwargs)

    triton.autotune = one_config

    from transformers.integrations import hub_kernels

    hub_kernels._PACKAGE_SUPPORTED_DEVICES["mamba_ssm"] = ("cuda", "cpu")

    from transformers.models.mamba import modeling_mamba

    for name, value in list(vars(modeling_mamba).items()):
        torch_function = torch_path_of(value, ("selective_scan_fn", "mamba_inner_fn"))
        if torch_function is not None:
            setattr(modeling_mamba, name, torch_function)


def torch_path_of(value, func_names) -> "object | None":
    """The torch reference behind one of transformers' kernel-or-fallback functions named in ``func_names``."""
    from tor_exp.models.kernels import _fallback_wrapper

    free = _fallback_wrapper(value)
    if free is None or free["func_name"] not in func_names:
        return None
    return free["torch_function"]
