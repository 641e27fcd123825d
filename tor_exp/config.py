"""Hydra schema: every override is type-checked by these dataclasses and value-checked in their __post_init__.

Each config group has a schema named ``<group>_schema`` (reduction: ``<method>_schema``) in Hydra's ConfigStore;
the group's YAML files start from it (``defaults: [<x>_schema, _self_]``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from tor_exp.errors import ConfigError

TASKS = ("eval", "bench", "generate")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Config:
    """Root schema. Group nodes are typed by their own schemas (selected per file in the defaults list)."""

    model: Any = None
    reduction: Any = None
    eval: Any = None
    bench: Any = None
    logger: Any = None
    # this machine's launcher settings (optional, untracked conf/local/default.yaml; see conf/local/example.yaml)
    local: Any = None
    task: str = "eval"
    seed: int = 0
    device: str = "auto"
    dtype: Optional[str] = None
    run_name: Optional[str] = None
    resume: bool = True
    prompt: str = "The quick brown fox"
    max_new_tokens: int = 32


@dataclass
class ValidatedConfig:
    """The run's config as typed, validated objects (not DictConfigs)."""

    model: Any
    reduction: Any
    eval: Any
    bench: Any
    logger: Any
    root: Config = field(default_factory=Config)


_registered = False


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    from tor_exp.bench.config import BenchConfig
    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.logging.config import LoggerConfig
    from tor_exp.models.config import ModelConfig
    from tor_exp.reduction import registered_methods

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
    cs.store(group="bench", name="bench_schema", node=BenchConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    for name, (config_cls, _) in registered_methods().items():
        cs.store(group="reduction", name=f"{name}_schema", node=config_cls)
    _registered = True


def _to_object(node: Any, key: str) -> Any:
    if node is None:
        raise ConfigError(f"{key}: missing config group (choose one, e.g. {key}=<name>)")
    try:
        return OmegaConf.to_object(node)
    except ConfigError:
        raise
    except Exception as err:  # OmegaConf's own validation errors carry the key
        raise ConfigError(f"{key}: {err}".splitlines()[0]) from err


def validate(cfg: DictConfig) -> ValidatedConfig:
    """Instantiate every group's dataclass (running its value checks) and the cross-group checks."""
    root = Config(**{k: cfg.get(k) for k in ("task", "seed", "device", "dtype", "run_name", "resume", "prompt",
                                             "max_new_tokens")})
    if root.task not in TASKS:
        raise ConfigError(f"task={root.task!r}: must be one of {', '.join(TASKS)}")
    if root.device not in DEVICES:
        raise ConfigError(f"device={root.device!r}: must be one of {', '.join(DEVICES)}")
    from tor_exp.models.config import DTYPES

    if root.dtype is not None and root.dtype not in DTYPES:
        raise ConfigError(f"dtype={root.dtype!r}: must be one of {', '.join(DTYPES)}")
    if root.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={root.max_new_tokens!r}: must be >= 1")
    validated = ValidatedConfig(
        model=_to_object(cfg.get("model"), "model"),
        reduction=_to_object(cfg.get("reduction"), "reduction"),
        eval=_to_object(cfg.get("eval"), "eval"),
        bench=_to_object(cfg.get("bench"), "bench"),
        logger=_to_object(cfg.get("logger"), "logger"),
        root=root,
    )
    # locations must lie inside the model's depth; ρ must be solvable (total scope needs the loaded model's
    # shape unless the config gives it, so that case is solved after loading).
    from tor_exp.models.flops import build_schedule, resolve_locations, shape_from_model_config

    resolve_locations(validated.reduction, validated.model)
    if getattr(validated.reduction, "flops_scope", "backbone") != "total" or shape_from_model_config(validated.model):
        build_schedule(validated.reduction, validated.model)
    return validated
