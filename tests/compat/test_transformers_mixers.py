"""The HF functions tor_exp.compat.transformers_mixers rebinds exist in every modeling module that needs them, and
a rebinding is undone after its block (fails loudly on a transformers upgrade that renames or removes one)."""
from __future__ import annotations

import importlib

import pytest

from tor_exp.compat.transformers_mixers import (
    MAMBA1_SCAN,
    MAMBA2_SCANS,
    capturing_mamba1_scan,
    missing_symbols,
)

#: modeling module → the scan names the capture of its mixer's y rebinds
NEEDED = {
    "transformers.models.mamba.modeling_mamba": (MAMBA1_SCAN,),
    "transformers.models.falcon_mamba.modeling_falcon_mamba": (MAMBA1_SCAN,),
    "transformers.models.jamba.modeling_jamba": (MAMBA1_SCAN,),
    "transformers.models.zamba.modeling_zamba": (MAMBA1_SCAN,),
    "transformers.models.falcon_h1.modeling_falcon_h1": MAMBA2_SCANS,
}


@pytest.mark.parametrize("module_name", sorted(NEEDED))
def test_patched_symbols_exist(module_name):
    module = importlib.import_module(module_name)
    assert missing_symbols(module, NEEDED[module_name]) == [], (
        f"{module_name} lost {missing_symbols(module, NEEDED[module_name])}: update tor_exp/compat/transformers_mixers.py")


def test_a_missing_symbol_is_a_named_error_and_a_rebinding_is_undone():
    from transformers.models.mamba import modeling_mamba
    from transformers.models.mamba.modeling_mamba import MambaConfig, MambaMixer

    mixer = MambaMixer(MambaConfig(hidden_size=16, state_size=4, num_hidden_layers=1, vocab_size=10), layer_idx=0)
    original = getattr(modeling_mamba, MAMBA1_SCAN)
    with capturing_mamba1_scan(mixer, {}):
        assert getattr(modeling_mamba, MAMBA1_SCAN) is not original
    assert getattr(modeling_mamba, MAMBA1_SCAN) is original
    delattr(modeling_mamba, MAMBA1_SCAN)
    try:
        with pytest.raises(TypeError, match=r"has no mamba_selective_scan .*written against transformers"):
            with capturing_mamba1_scan(mixer, {}):
                pass
    finally:
        setattr(modeling_mamba, MAMBA1_SCAN, original)
