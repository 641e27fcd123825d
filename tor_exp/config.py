"""Hydra schema: every override is type-checked by these dataclasses and value-checked in their __post_init__.

Each config group has a schema named ``<group>_schema`` (reduction: ``<method>_schema``) in Hydra's ConfigStore;
the group's YAML files start from it (``defaults: [<x>_schema, _self_]``).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from tor_exp.errors import ConfigError

if TYPE_CHECKING:  # the groups' schemas, imported where they are registered (keeps this module light)
    from tor_exp.bench.config import BenchConfig
    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.models.config import ModelConfig
    from tor_exp.models.locations import Schedule
    from tor_exp.models.shape import ModelShape
    from tor_exp.records.config import LoggerConfig
    from tor_exp.reduction.base import ReductionConfig

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


@dataclass(frozen=True)
class ValidatedConfig:
    """The run's config as typed, validated objects (not DictConfigs), built once by :func:`validate` and never
    changed afterwards: values that validation resolves (a relative ``model.path``, ``dtype``, ``eval.alignment``)
    are already resolved here.

    ``schedule``: the reduction's locations and keep ratio solved during validation, when the config tells the
    model's shape (None: a checkpoint whose shape is known once loaded); ``solved_on``: the shape it was solved on
    (None: solved from the depth alone). :meth:`reduction_for` reuses it for the loaded model when it holds.
    """

    model: "ModelConfig"
    reduction: "ReductionConfig"
    eval: "EvalConfig"
    bench: "BenchConfig"
    logger: "LoggerConfig"
    root: Config = field(default_factory=Config)
    schedule: Optional["Schedule"] = None
    solved_on: Optional["ModelShape"] = None

    def reduction_for(self, loaded: "ModelShape") -> tuple[Any, "Schedule"]:
        """(method, schedule) on the loaded model: the schedule solved in validation when it holds for this
        model (:func:`tor_exp.models.schedule.holds_for`), else solved now on the loaded shape."""
        from tor_exp.models.schedule import build_reduction, holds_for

        planned = self.schedule if self.schedule is not None and holds_for(
            self.schedule, self.solved_on, self.reduction, self.model, loaded) else None
        return build_reduction(self.reduction, self.model, shape=loaded, schedule=planned)


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
    if not OmegaConf.has_resolver("tor_exp_run_token"):  # cached in the config like Hydra's ${now:}: one per run
        OmegaConf.register_new_resolver("tor_exp_run_token", lambda: _RUN_TOKEN, use_cache=True)


#: ``${tor_exp_run_token:}``: six hex digits drawn once per process, which make the default run / sweep folder
#: (``<date>/<time>-<token>``) unique per run: two runs started in the same second never share a folder
_RUN_TOKEN = __import__("secrets").token_hex(3)


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
    from tor_exp.compat.hydra import compose_config

    register_configs()
    overrides = expand_model_dirs(overrides)
    try:
        cfg = compose_config(config_dir(), overrides, multirun=multirun)
    except Exception as err:
        appended = _appended(err, overrides)
        if appended is None:
            raise
        # the same override with '+': composes, and the schema names the key it lacks in tor_exp's words
        check_keys(compose_dict(appended, return_hydra_config=True, multirun=multirun))
        raise
    if not return_hydra_config:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def _appended(err: BaseException, overrides: Sequence[str]) -> Optional[list[str]]:
    """Hydra refuses ``reduction.qq=0.9`` (a key its struct flag does not know) but takes ``+reduction.qq=0.9``:
    the overrides with that one written the ``+`` way, so the schema (:func:`check_keys`) words both the same;
    None for any other error."""
    import re

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    found = re.match(r"Could not override '([^']+)'", str(err))
    if found is None or not isinstance(err.__cause__, (ConfigKeyError, ConfigAttributeError)):
        return None
    key = found.group(1)
    hits = [i for i, o in enumerate(overrides) if o.split("=", 1)[0] == key]
    if len(hits) != 1:
        return None
    return [f"+{o}" if i == hits[0] else o for i, o in enumerate(overrides)]


def expand_model_dirs(overrides: Sequence[str]) -> list[str]:
    """``model=<existing directory>`` → ``model=local model.path=<that directory, absolute>`` (Hydra would look for
    a config file ``model/<directory>.yaml``); a path-looking ``model=`` value that is no directory is one line.
    Relative directories are taken against the cwd, the directory the user launched from."""
    import os
    import re

    from tor_exp.models.config import looks_like_path

    out: list[str] = []
    for override in overrides:
        key, eq, value = override.partition("=")
        value = value.strip().strip("'\"") if eq else value
        if key.strip() != "model" or not eq or "," in value or not (looks_like_path(value) or os.path.isdir(value)):
            out.append(override)
            continue
        if (Path(config_dir()) / "model" / f"{value}.yaml").is_file():
            out.append(override)
            continue
        full = os.path.abspath(os.path.expanduser(value))
        if not os.path.isdir(full):
            raise ConfigError(f"model={value}: no such option or directory ({full})")
        quoted = full if re.fullmatch(r"[\w./~+-]+", full) else "'" + full.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out += ["model=local", f"model.path={quoted}"]
    return out


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
    return validate(compose_dict(overrides, return_hydra_config=True))  # Hydra's part names the groups' choices


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


#: keys whose values are free-form (not checked against a schema): this machine's launcher settings; a tiny
#: model's ``model.tiny.config`` (a dict of the family's HF config keys) is free-form by its type
FREE_FORM = ("local",)


def group_schemas(cfg: DictConfig) -> dict[str, type]:
    """The dataclass each group node of ``cfg`` must follow (reduction: the selected method's config class)."""
    from tor_exp.bench.config import BenchConfig
    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.models.config import ModelConfig
    from tor_exp.records.config import LoggerConfig
    from tor_exp.reduction import registered_methods

    schemas: dict[str, type] = {"model": ModelConfig, "eval": EvalConfig, "bench": BenchConfig,
                                "logger": LoggerConfig}
    reduction = cfg.get("reduction")
    method = reduction.get("method") if isinstance(reduction, DictConfig) else None
    if method in registered_methods():
        schemas["reduction"] = registered_methods()[method][0]
    return schemas


def _choices(cfg: DictConfig) -> dict[str, str]:
    """The option each group was composed from (``reduction`` → ``utrc``), for naming it in an error: Hydra's
    record of the choices where there is one, else what the nodes say of themselves."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            choices = HydraConfig.get().runtime.choices
        except ValueError:
            choices = None
    found = {str(k): str(v) for k, v in (choices or {}).items()} if choices is not None else {}
    for group, key in (("model", "name"), ("reduction", "method")):
        node = cfg.get(group)
        if group not in found and isinstance(node, DictConfig) and node.get(key) is not None:
            found[group] = str(node.get(key))
    return found


def check_keys(cfg: DictConfig) -> None:
    """Every key of ``cfg`` is a field of its schema (the dataclasses in Hydra's ConfigStore), however it got
    there: Hydra refuses an unknown ``key=value`` but adds ``+key=value`` to a structured node, and
    ``OmegaConf.to_object`` then drops the key silently, so a run would record a setting that never took
    effect. Free-form values (:data:`FREE_FORM`, dict- or Any-typed fields) take any key."""
    root_fields = [f.name for f in dataclasses.fields(Config)]
    for key in cfg.keys():
        if key not in root_fields and key != "hydra":
            raise ConfigError(f"{key}: not a key of tor_exp's config (keys: {', '.join(root_fields)})")
    choices = _choices(cfg)
    for group, schema in group_schemas(cfg).items():
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            label = f"{group}={choices[group]}" if group in choices else group
            _check_node(node, schema, group, label)


def _check_node(node: DictConfig, schema: type, path: str, label: str) -> None:
    import typing

    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys():
        if key not in names:
            raise ConfigError(f"{path}.{key}: not a key of {label} (keys: {', '.join(names)})")
        child, kind = node.get(key), hints.get(str(key))
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(kind):
            _check_node(child, kind, f"{path}.{key}", f"{path}.{key}")


def validate(cfg: DictConfig, *, check_device: bool = True) -> ValidatedConfig:
    """Instantiate every group's dataclass (running its value checks) and the cross-group checks: everything a
    job can know is wrong before it loads a model or takes its folder (the README's promise), so a sweep's
    precheck refuses a bad job before the first one runs. The reduction's schedule is solved here when the
    config tells the model's shape, and the job reuses it (:meth:`ValidatedConfig.reduction_for`).

    ``check_device``: ``device=cuda`` needs a GPU here (off where the job runs elsewhere: a Slurm launcher's
    login node has none). A config already validated in this process (the command line's precheck, then its
    Hydra job) is not validated again: the same text, launch directory and ``check_device`` give an equal copy
    of the first result.
    """
    from tor_exp.paths import launch_dir

    try:
        key = (OmegaConf.to_yaml(_without_hydra(cfg), resolve=True), launch_dir(), check_device)
    except Exception:  # noqa: BLE001 - an interpolation that does not resolve: validation names it
        return _validate(cfg, check_device=check_device)
    cached = _validated.get(key)
    if cached is None:
        cached = _validate(cfg, check_device=check_device)
        _validated.clear()  # one entry: a process runs one job (its precheck, then the job)
        _validated[key] = cached
    return copy.deepcopy(cached)  # the groups' dataclasses are plain: no caller can change another's


#: the last config :func:`validate` built, by its text (see there)
_validated: dict[tuple[str, str, bool], ValidatedConfig] = {}


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """``cfg`` without its ``hydra`` node (the run's folders and launcher: not the job's settings)."""
    if "hydra" not in cfg:
        return cfg
    return OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])  # type: ignore[arg-type]


def _validate(cfg: DictConfig, *, check_device: bool) -> ValidatedConfig:
    check_keys(cfg)
    root = Config(**{k: cfg.get(k) for k in ("task", "seed", "device", "dtype", "run_name", "resume", "overwrite",
                                             "prompt", "max_new_tokens")})
    if root.task not in TASKS:
        raise ConfigError(f"task={root.task!r}: must be one of {', '.join(TASKS)}")
    if root.device not in DEVICES:
        raise ConfigError(f"device={root.device!r}: must be one of {', '.join(DEVICES)}")
    from tor_exp.models.config import DTYPES

    if root.dtype is not None and root.dtype not in DTYPES:
        raise ConfigError(f"dtype={root.dtype!r}: must be one of {', '.join(DTYPES)}")
    if check_device and root.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device='cuda': no CUDA device is available (use device=cpu or device=auto)")
    if root.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={root.max_new_tokens!r}: must be >= 1")
    if root.task == "generate" and not (root.prompt or "").strip():
        raise ConfigError(f"prompt={root.prompt!r}: task=generate needs a non-empty prompt")
    model = _with_paths(_to_object(cfg.get("model"), "model"))
    if root.dtype is not None:  # the root ``dtype`` override wins over the model's own
        model = dataclasses.replace(model, dtype=root.dtype)
    reduction = _to_object(cfg.get("reduction"), "reduction")
    evaluation = _to_object(cfg.get("eval"), "eval")
    bench = _to_object(cfg.get("bench"), "bench")
    logger = _to_object(cfg.get("logger"), "logger")
    if root.task == "eval":
        from tor_exp.evaluation.config import check_task_names

        check_task_names(list(evaluation.tasks), list(evaluation.include_paths))
    # auto ⇒ the concrete alignment for this method; exact with a parity method is refused here, before loading
    from tor_exp.evaluation.config import resolve_alignment

    evaluation = dataclasses.replace(evaluation, alignment=resolve_alignment(evaluation.alignment, reduction.method))
    from tor_exp.models.families.registry import family_info

    info = family_info(model.family)  # None for auto: the checkpoint tells, after loading
    if reduction.parity and info is not None and not info.parity:
        raise ConfigError(f"reduction={reduction.method}: parity mode reproduces the released code, which "
                          f"runs Mamba and Mamba-2 only, not model.family={model.family}; use "
                          "the paper-mode method (utrc, evit, pumer)")
    # locations must lie inside the model's depth; ρ must be solvable (total scope needs the loaded model's
    # shape unless the config gives it, so that case is solved after loading).
    from tor_exp.models.loading import shape_from_model_config
    from tor_exp.models.schedule import build_reduction, needs_shape, resolve_locations

    shape, needed = None, needs_shape(reduction, model)
    if needed or root.task == "bench":
        shape = shape_from_model_config(model)
    schedule = None
    if shape is not None or not needed:
        schedule = build_reduction(reduction, model, shape=shape)[1]
    elif model.n_layer is not None:  # a hub checkpoint not in the local cache: ρ is solved once it is loaded,
        resolve_locations(reduction, model)  # but its locations can be checked against the stated depth now
    validated = ValidatedConfig(model=model, reduction=reduction, eval=evaluation, bench=bench, logger=logger,
                                root=root, schedule=schedule,
                                solved_on=shape if schedule is not None and needed else None)
    if root.task == "bench":
        _check_bench_targets(validated, shape)
    return validated


def _with_paths(model: "ModelConfig") -> "ModelConfig":
    """``model.path`` and ``model.calibration_text`` as the job will read them: relative to the directory the
    user launched from, and existing (a missing directory is never looked up on the hub; a missing calibration
    file would surface after a whole ``none`` baseline)."""
    import os

    from tor_exp.models.config import resolve_model_path
    from tor_exp.paths import PKG_PREFIX, launch_dir, resolve_pkg_path

    base = launch_dir()
    path, text = model.path, model.calibration_text
    if path and model.source != "tiny":
        path = resolve_model_path(path, model.source, base)
    if text:
        full = resolve_pkg_path(text, "model.calibration_text") if text.startswith(PKG_PREFIX) else \
            os.path.normpath(os.path.join(base, os.path.expanduser(text)))
        if not os.path.isfile(full):
            raise ConfigError(f"model.calibration_text={text}: no such file ({full})")
        if not text.startswith(PKG_PREFIX):
            text = full
    if (path, text) == (model.path, model.calibration_text):
        return model
    return dataclasses.replace(model, path=path, calibration_text=text)


def _check_bench_targets(v: ValidatedConfig, shape: Any) -> None:
    """Each ``bench.flops_targets`` entry must be solvable on this model, as the benchmark will solve it (each
    length, plain and/or chunk-aligned), before the model loads."""
    from tor_exp.models.schedule import build_schedule, needs_shape

    if v.reduction.method == "none":
        return
    modes = {"plain": (False,), "aligned": (True,), "both": (False, True)}[v.bench.chunk_align]
    for target in v.bench.flops_targets:
        if target == 0.0:
            continue
        for aligned in modes:
            cfg = dataclasses.replace(v.reduction, target_flops=float(target), keep_ratio=None, chunk_align=aligned)
            if shape is None and needs_shape(cfg, v.model):
                continue  # a hub checkpoint not in the local cache: the benchmark solves it once loaded
            for seq_len in v.bench.seq_lens:
                try:
                    build_schedule(cfg, v.model, seq_len=seq_len, shape=shape, logits=v.bench.logits)
                except ConfigError as err:
                    raise ConfigError(f"bench.flops_targets={list(v.bench.flops_targets)}: {err}") from err
