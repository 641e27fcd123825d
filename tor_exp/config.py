"""Hydra schema: every override is type-checked by these dataclasses and value-checked in their __post_init__.

Each config group has a schema named ``<group>_schema`` (reduction: ``<method>_schema``) in Hydra's ConfigStore;
the group's YAML files start from it (``defaults: [<x>_schema, _self_]``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

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
    overwrite: bool = False
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


def register_resolvers() -> None:
    """The resolvers that name job folders from the one definition of the keys that do not change a result
    (:mod:`tor_exp.records.keys`): ``${tor_exp_exclude_keys:${hydra.sweeper.params}}`` gives Hydra's
    ``override_dirname.exclude_keys`` (conf/hydra/default.yaml), ``${tor_exp_dirname:}`` the job's folder name from
    its overrides and those keys (every ``hydra.sweep.subdir``). Runs at import, so every process that unpickles a
    tor_exp job (submitit) has them before Hydra resolves the job's folder."""
    from tor_exp.records.keys import dirname_exclude_keys

    if not OmegaConf.has_resolver("tor_exp_exclude_keys"):
        OmegaConf.register_new_resolver("tor_exp_exclude_keys", dirname_exclude_keys)
    if not OmegaConf.has_resolver("tor_exp_dirname"):
        OmegaConf.register_new_resolver("tor_exp_dirname", _job_dirname)


def _job_dirname(*args: Any, _root_: DictConfig) -> str:
    """``${tor_exp_dirname:}``: the folder name of the job whose config this is (its ``hydra.overrides.task``
    without its ``hydra.job.config.override_dirname.exclude_keys``); explicit arguments (overrides, exclude keys)
    are still accepted."""
    from tor_exp.records.keys import job_dirname

    if args:
        return job_dirname(*args)
    return job_dirname(list(OmegaConf.select(_root_, "hydra.overrides.task") or []),
                       list(OmegaConf.select(_root_, "hydra.job.config.override_dirname.exclude_keys") or []))


register_resolvers()


def config_error_line(err: BaseException) -> str:
    """One line for an error of composing a config (every entry point words it the same): an unknown group option
    is named with the options there are, anything else as :func:`tor_exp.errors.one_line`."""
    from hydra.errors import MissingConfigException

    from tor_exp.errors import one_line

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        return _missing_option(err.missing_cfg_file, err.options)
    return one_line(err)


def _missing_option(missing: str, options: Optional[list[str]]) -> str:
    """``reduction/UTRC`` → ``reduction=UTRC: no such option (choose one of evit, ..., utrc_official)``; the
    schemas tor_exp stores for each group (``*_schema``) are not options a user picks."""
    group, _, name = missing.rpartition("/")
    if options is None:  # Hydra lists none for a nested group such as experiment/cell
        options = [p.stem for p in Path(config_dir(), group).glob("*.yaml")]
    choices = sorted(o for o in options if not o.endswith("_schema"))
    listed = f"choose one of {', '.join(choices)}" if choices else f"conf/{group}/ has no options"
    return f"{group}={name}: no such option ({listed})"


def config_dir() -> str:
    """The repo's conf/ in a source checkout, the packaged copy (tor_exp/conf) in a wheel install."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise ConfigError("tor_exp config directory not found (expected conf/config.yaml next to the package)")


def compose_dict(overrides: Sequence[str] = (), *, return_hydra_config: bool = False,
                 multirun: bool = False) -> DictConfig:
    """The primary config with ``overrides`` applied, exactly as ``python -m tor_exp <overrides>`` composes it.

    Not validated (see :func:`compose`); for callers that need the DictConfig itself (a job's resolved config,
    sweep tests that read ``hydra.*``). ``multirun``: compose as ``-m`` does (sweep values allowed; the result is
    the sweep's primary config, see :func:`sweep_jobs`). Works inside and outside a running Hydra app: the global
    Hydra state of a running job is saved and restored.
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    register_configs()
    hydra_global = GlobalHydra.instance()
    saved = hydra_global.hydra if hydra_global.is_initialized() else None
    hydra_global.clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = hydra_global.hydra.compose_config(  # type: ignore[union-attr]
                config_name="config", overrides=list(overrides), from_shell=False, with_log_configuration=False,
                run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
        if not return_hydra_config:
            with open_dict(cfg):
                del cfg["hydra"]
        return cfg
    finally:
        hydra_global.clear()
        if saved is not None:
            hydra_global.initialize(saved)


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The overrides of every job ``python -m tor_exp -m <overrides>`` launches: Hydra's basic sweeper rule (the
    experiment's ``hydra.sweeper.params`` then the command line; a later value of a key replaces an earlier one
    in its place; comma lists and ranges crossed in that order, the last key varying fastest)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    primary = compose_dict(overrides, return_hydra_config=True, multirun=True)
    params = [f"{k}={v}" for k, v in (primary.hydra.sweeper.get("params") or {}).items()]
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(params + list(overrides)):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ConfigError(f"{override.input_line}: Hydra's basic sweeper runs lists and "
                              f"ranges, not intervals")
    return [list(job) for job in itertools.product(*choices.values())]


def compose(overrides: Sequence[str] = ()) -> "ValidatedConfig":
    """Compose + validate: the one way a library caller, a test or an entry point gets a config."""
    return validate(compose_dict(overrides))


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    from tor_exp.bench.config import BenchConfig
    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.records.config import LoggerConfig
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
    root = Config(**{k: cfg.get(k) for k in ("task", "seed", "device", "dtype", "run_name", "resume", "overwrite",
                                             "prompt", "max_new_tokens")})
    if root.task not in TASKS:
        raise ConfigError(f"task={root.task!r}: must be one of {', '.join(TASKS)}")
    if root.device not in DEVICES:
        raise ConfigError(f"device={root.device!r}: must be one of {', '.join(DEVICES)}")
    from tor_exp.models.config import DTYPES

    if root.dtype is not None and root.dtype not in DTYPES:
        raise ConfigError(f"dtype={root.dtype!r}: must be one of {', '.join(DTYPES)}")
    if root.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={root.max_new_tokens!r}: must be >= 1")
    if root.task == "generate" and not (root.prompt or "").strip():
        raise ConfigError(f"prompt={root.prompt!r}: task=generate needs a non-empty prompt")
    validated = ValidatedConfig(
        model=_to_object(cfg.get("model"), "model"),
        reduction=_to_object(cfg.get("reduction"), "reduction"),
        eval=_to_object(cfg.get("eval"), "eval"),
        bench=_to_object(cfg.get("bench"), "bench"),
        logger=_to_object(cfg.get("logger"), "logger"),
        root=root,
    )
    # auto ⇒ the concrete alignment for this method; exact with a parity method is refused here, before loading
    from tor_exp.evaluation.config import resolve_alignment

    validated.eval.alignment = resolve_alignment(validated.eval.alignment, validated.reduction.method)
    from tor_exp.models.families.registry import family_info

    info = family_info(validated.model.family)  # None for auto: the checkpoint tells, after loading
    if getattr(validated.reduction, "parity", False) and info is not None and not info.parity:
        raise ConfigError(f"reduction={validated.reduction.method}: parity mode reproduces the released code, which "
                          f"runs Mamba and Mamba-2 only, not model.family={validated.model.family}; use "
                          "the paper-mode method (utrc, evit, pumer)")
    # locations must lie inside the model's depth; ρ must be solvable (total scope needs the loaded model's
    # shape unless the config gives it, so that case is solved after loading).
    from tor_exp.models.schedule import build_reduction, needs_shape

    shape = None
    if needs_shape(validated.reduction, validated.model):
        from tor_exp.models.loading import shape_from_model_config

        shape = shape_from_model_config(validated.model)
        if shape is None:  # a hub checkpoint not in the local cache: solved once it is loaded
            return validated
    build_reduction(validated.reduction, validated.model, shape=shape)
    return validated
