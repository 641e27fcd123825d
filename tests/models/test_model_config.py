"""conf/model/*.yaml against the ModelConfig schema, and the schema's validation messages."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tor_exp.errors import ConfigError
from tor_exp.models.config import ModelConfig, TinyModelConfig

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"

EXPECTED = {  # name: (family, source, path, n_layer)
    "mamba_130m": ("mamba", "hf", "state-spaces/mamba-130m-hf", 24),
    "mamba_370m": ("mamba", "hf", "state-spaces/mamba-370m-hf", 48),
    "mamba_790m": ("mamba", "hf", "state-spaces/mamba-790m-hf", 48),
    "mamba_1.4b": ("mamba", "hf", "state-spaces/mamba-1.4b-hf", 48),
    "mamba_2.8b": ("mamba", "hf", "state-spaces/mamba-2.8b-hf", 64),
    "mamba2_130m": ("mamba2", "mamba_ssm", "state-spaces/mamba2-130m", 24),
    "mamba2_370m": ("mamba2", "mamba_ssm", "state-spaces/mamba2-370m", 48),
    "mamba2_780m": ("mamba2", "mamba_ssm", "state-spaces/mamba2-780m", 48),
    "mamba2_1.3b": ("mamba2", "mamba_ssm", "state-spaces/mamba2-1.3b", 48),
    "mamba2_2.7b": ("mamba2", "mamba_ssm", "state-spaces/mamba2-2.7b", 64),
    "tiny_mamba": ("mamba", "tiny", None, 16),
    "tiny_mamba2": ("mamba2", "tiny", None, 16),
}
PAPER_LOCATIONS = {64: [12, 17, 22, 27, 32, 37, 42], 48: [10, 15, 20, 25, 30, 35]}


def load_yaml(name: str) -> ModelConfig:
    from tor_exp.config import compose

    # model=local needs a checkpoint directory: the shipped reference model is one
    path = ["model.path=pkg://tor_exp/reference/assets"] if name == "local" else []
    return compose([f"model={name}", "reduction=none", *path]).model


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_yaml(name):
    cfg = load_yaml(name)
    family, source, path, depth = EXPECTED[name]
    assert (cfg.family, cfg.source, cfg.path, cfg.n_layer) == (family, source, path, depth)
    if depth in PAPER_LOCATIONS:
        assert cfg.locations == PAPER_LOCATIONS[depth]
    assert all(0 <= l <= depth - 2 for l in cfg.locations) and len(cfg.locations) >= 4
    if family == "mamba2" and source != "tiny":
        assert cfg.tokenizer == "EleutherAI/gpt-neox-20b"
    if source == "tiny":
        assert cfg.tiny.n_layer == 16 and cfg.tiny.d_model == 64 and cfg.tokenizer == "byte"


def test_every_yaml_validates():
    """Ours are all present; any other model YAML (e.g. the shipped reference model) fits the schema too."""
    stems = {p.stem for p in CONF.glob("*.yaml")}
    assert set(EXPECTED) <= stems
    for stem in stems:
        cfg = load_yaml(stem)
        if cfg.n_layer is None:  # depth (and so the default locations) read from the checkpoint
            assert cfg.source in ("hf", "local") and cfg.locations is None, stem
            continue
        assert all(0 <= l <= cfg.n_layer - 2 for l in cfg.locations), stem


@pytest.mark.parametrize("changes,key", [
    ({"family": "mamba3"}, "model.family"),
    ({"source": "s3"}, "model.source"),
    ({"dtype": "int8"}, "model.dtype"),
    ({"backend": "jax"}, "model.backend"),
    ({"source": "hf", "path": None}, "model.path"),
    ({"locations": [3, 4.5]}, "model.locations"),
    ({"locations": [7, 3]}, "model.locations"),
    ({"n_layer": 12}, "model.n_layer"),
    ({"tiny": TinyModelConfig(head_dim=48)}, "model.tiny.head_dim"),
    ({"tiny": TinyModelConfig(d_model=0)}, "model.tiny.d_model"),
])
def test_validation_names_the_key(changes, key):
    base = dict(name="t", family="mamba2", source="tiny", n_layer=16, locations=[4, 7, 10, 13])
    with pytest.raises(ConfigError, match="^" + re.escape(key) + "="):
        ModelConfig(**(base | changes))


def test_locations_against_the_depth_are_checked_once_by_validation():
    """The schema checks what it knows alone (integers, increasing); the depth rule lives in resolve_locations,
    which validation runs: the same one line for model.locations and reduction.locations."""
    from tor_exp.config import compose

    with pytest.raises(ConfigError, match=re.escape("model.locations=[3, 15]: locations [15] outside [0, 14] for a "
                                                    "16-layer model")):
        compose(["model=tiny_mamba2", "model.locations=[3,15]"])
    with pytest.raises(ConfigError, match=re.escape("reduction.locations=[15]: locations [15] outside [0, 14]")):
        compose(["model=tiny_mamba2", "reduction=utrc", "reduction.locations=[15]"])
    assert ModelConfig(name="t", family="mamba2", source="tiny", n_layer=16, locations=[3, 15]).locations == [3, 15]
