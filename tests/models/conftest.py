"""Tiny random Mamba / Mamba-2 models shared by tests/models (built once per session, fixed seed)."""
from __future__ import annotations

import pytest
import torch

from tor_exp.models.config import ModelConfig, TinyModelConfig
from tor_exp.models.loading import load_model

# Smaller than conf/model/tiny_*.yaml (16 layers) only in width, so the whole folder stays fast on one thread.
LOCATIONS = [2, 4, 6]


def tiny_cfg(family: str, **tiny) -> ModelConfig:
    shape = dict(d_model=32, n_layer=8, state_size=8, head_dim=8, chunk_size=16) | tiny
    return ModelConfig(name=f"test_{family}", family=family, source="tiny", n_layer=shape["n_layer"],
                       locations=[l for l in LOCATIONS if l < shape["n_layer"] - 1], tiny=TinyModelConfig(**shape),
                       seed=0)


@pytest.fixture(scope="session")
def tiny_models() -> dict:
    models = {}
    for family in ("mamba", "mamba2"):
        model, tok = load_model(tiny_cfg(family))
        models[family] = (model, tok)
    return models


@pytest.fixture(params=["mamba", "mamba2"])
def family(request) -> str:
    return request.param


@pytest.fixture
def model(tiny_models, family):
    m = tiny_models[family][0]
    from tor_exp.models.patching import unpatch

    unpatch(m)
    yield m
    unpatch(m)


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=g)
