"""Shared tiny model for the evaluation tests: 4-layer Mamba-2 (d_model 64, chunk 32), byte tokenizer."""
from __future__ import annotations

import pytest

from eval_helpers import LOCATIONS, N_LAYER

from tor_exp.models import ModelConfig, Schedule, TinyModelConfig, load_model


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): unpatched, fp32, CPU, fixed seed."""
    cfg = ModelConfig(n_layer=N_LAYER, locations=[1, 2], tiny=TinyModelConfig(n_layer=N_LAYER), seed=0)
    return load_model(cfg)


@pytest.fixture()
def patched(tiny):
    """The tiny model patched with UTRC at keep ratio 0.5 after blocks 0 and 1; unpatched afterwards."""
    from tor_exp.models import patch, unpatch
    from tor_exp.reduction import build_method
    from tor_exp.reduction.utrc import UTRCConfig

    model, tok = tiny
    patch(model, build_method(UTRCConfig(keep_ratio=0.5)),
          Schedule(locations=LOCATIONS, keep_ratio=0.5, target_flops=0.3))
    try:
        yield model, tok
    finally:
        unpatch(model)
