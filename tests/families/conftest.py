"""Tiny random models of every hybrid family (from conf/model/tiny_<family>.yaml), built once per session, and the
independent references the family tests compare tor_exp against: HF's own forward, generate and layers."""
from __future__ import annotations

import pytest

from family_cases import FAMILIES


@pytest.fixture(scope="session")
def family_models(compose) -> dict:
    from tor_exp.models import load_model

    built = {}
    for family in FAMILIES:
        cfg = compose(f"model=tiny_{family}").model
        model, tok = load_model(cfg)
        built[family] = (model, tok, cfg)
    return built


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_family(family_models, family):
    """(model, tokenizer, model config) of ``family``, unpatched before and after the test."""
    from tor_exp.models import unpatch

    model, tok, cfg = family_models[family]
    unpatch(model)
    yield model, tok, cfg
    unpatch(model)
