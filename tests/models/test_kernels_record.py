"""tor_exp.models.kernels: which kernel each part runs, read from what transformers' modeling module bound."""
import sys

import pytest

from tor_exp.models.kernels import _fallback_wrapper, kernels_used


def test_tiny_models_record_the_torch_references(tiny_models):
    """Without mamba_ssm / causal_conv1d (this environment) every part is the torch reference, on any device."""
    for family, scan in (("mamba2", "mamba2_scan"), ("mamba", "mamba1_scan")):
        model = tiny_models[family][0]
        for device in ("cpu", "cuda"):
            used = kernels_used(model, device)
            assert used[scan] == used["ssm_update"] == used["causal_conv1d"] == used["rms_norm"] == "torch", used


def test_the_wrapper_is_read_from_transformers_own_closure():
    """The reading depends on transformers' decorator internals: if they change, this fails instead of the record
    silently saying nothing (kernels_used would return {})."""
    module = sys.modules["transformers.models.mamba2.modeling_mamba2"]
    free = _fallback_wrapper(module.mamba2_chunk_scan)
    assert free is not None and free["func_name"] == "mamba_chunk_scan_combined" and free["package"] == "mamba_ssm"
    assert free["implementation"] is free["torch_function"]


def test_an_unreadable_model_never_raises():
    assert "unknown" in kernels_used(object())  # no parameters to read the device from
    assert kernels_used(object(), "cpu") == {}  # not a transformers model: nothing to say
