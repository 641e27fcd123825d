"""Registry, config validation (ConfigError naming the key) and the conf/reduction YAML files."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import tor_exp.reduction as reduction
from tor_exp.errors import ConfigError
from tor_exp.reduction import ReductionConfig, build_method, registered_methods
from tor_exp.reduction.evit import EViTConfig
from tor_exp.reduction.ltmp import LTMPConfig
from tor_exp.reduction.parity import UTRCParityConfig
from tor_exp.reduction.pumer import PuMerConfig
from tor_exp.reduction.utrc import UTRCConfig

CONF = Path(__file__).resolve().parents[2] / "conf" / "reduction"
EXPECTED = {"none", "utrc", "evit", "pumer", "ltmp", "utrc_official", "evit_official", "pumer_official"}


def test_registry_is_complete_on_import() -> None:
    assert set(registered_methods()) == EXPECTED
    assert reduction.TokenState is not None and callable(reduction.build_method)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_method_has_a_schema_default_and_a_yaml_file_with_every_key(name: str) -> None:
    config_cls, method_cls = registered_methods()[name]
    assert issubclass(config_cls, ReductionConfig)
    default = config_cls()
    assert default.method == name
    assert type(build_method(default)) is method_cls
    data = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert data.pop("defaults") == [f"{name}_schema", "_self_"]
    fields = {f.name: getattr(default, f.name) for f in dataclasses.fields(config_cls)}
    assert data == fields, f"conf/reduction/{name}.yaml must list every key with its default"


def test_parity_defaults_are_the_released_ones() -> None:
    cfg = UTRCParityConfig()
    assert (cfg.keep_ratio, cfg.target_flops, cfg.hidden, cfg.residual, cfg.metric) == (0.905, None, "hybrid", "merge", "clip")
    assert registered_methods()["none"][0]().target_flops == 0.0


@pytest.mark.parametrize(
    "cls, key, value",
    [
        (UTRCConfig, "q", 1.5),
        (UTRCConfig, "residual_q", -0.1),
        (UTRCConfig, "metric", "l3"),
        (UTRCConfig, "importance_source", "residual"),
        (UTRCConfig, "similarity_source", "logits"),
        (UTRCConfig, "hidden", "drop"),
        (UTRCConfig, "residual", "fuse"),
        (UTRCConfig, "hybrid_prune_by", "random"),
        (UTRCConfig, "size_weighted", "yes"),
        (UTRCConfig, "keep_ratio", 0.0),
        (EViTConfig, "fuse", "maybe"),
        (EViTConfig, "metric", "max"),
        (PuMerConfig, "similarity_source", "attention"),
        (LTMPConfig, "prune_share", 2.0),
        (LTMPConfig, "freeze", "median"),
        (UTRCParityConfig, "metric", "l1"),
        (UTRCParityConfig, "hidden", "evit"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(cls, key, value) -> None:
    with pytest.raises(ConfigError, match=rf"^reduction\.{key}="):
        cls(**{key: value})


def test_unknown_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="reduction.method"):
        build_method(ReductionConfig(method="tome"))
