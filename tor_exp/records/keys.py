"""Which config keys change what a job computes: the one definition behind job folder names, the resume hash,
W&B run names and the report's columns.

A job's *result keys* are its resolved config minus :data:`NON_RESULT_KEYS`. Folder names (Hydra's
``override_dirname`` rule, see :func:`job_dirname`) also leave out :data:`LAYOUT_KEYS` (they choose where and how jobs
run, and the sweep dir already names the experiment) and an experiment's own sweep axes, which its folder prefix
shows (``conf/hydra/default.yaml`` passes ``hydra.sweeper.params`` to :func:`dirname_exclude_keys`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterable, Mapping, Sequence

from tor_exp.records.config import LoggerConfig

#: top-level config keys that do not change what a job computes: W&B settings, the resume / overwrite policy, the
#: run's label, and this machine's launcher settings (the optional ``conf/local/`` group)
NON_RESULT_KEYS: tuple[str, ...] = ("logger", "resume", "run_name", "overwrite", "local")
#: command-line keys that choose where and how jobs run, not what they compute: the experiment (it names the sweep
#: dir), the launcher and Hydra's own settings
LAYOUT_KEYS: tuple[str, ...] = ("experiment", "launcher", "hydra")

#: longest job folder name a sweep writes (file systems allow 255 bytes)
MAX_DIRNAME = 120
_ITEM_MAX = 40


def _parents(key: str) -> list[str]:
    """``a.b.c`` → ``["a", "a.b", "a.b.c"]``: the key and every node above it (``experiment/cell`` is a group of
    its own, not a node of ``experiment``)."""
    return [key[:i] for i, ch in enumerate(key) if ch == "."] + [key]


def is_excluded(key: str, exclude_keys: Iterable[str]) -> bool:
    """``key`` (an override's key or group, e.g. ``logger.mode``) is left out when it or a node above it is listed."""
    listed = set(exclude_keys)
    return any(part in listed for part in _parents(key.lstrip("+~")))


def result_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides a job's numbers (what the resume hash and the report compare)."""
    return {k: v for k, v in resolved.items() if k not in NON_RESULT_KEYS and k != "hydra"}


def config_hash(resolved: Mapping[str, Any]) -> str:
    """Stable hash of what a run computes, so an identical finished run can be skipped on resume."""
    blob = json.dumps(result_config(resolved), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dirname_exclude_keys(sweep_params: Mapping[str, Any] | None = None) -> list[str]:
    """Override keys left out of job folder names (Hydra's ``hydra.job.config.override_dirname.exclude_keys``):
    the non-result and layout keys, plus the keys of ``sweep_params`` (an experiment's ``hydra.sweeper.params``:
    its axes, which its folder prefix shows). Hydra matches these exactly, so the ``logger`` group's keys are
    listed one by one; :func:`job_dirname` also matches by prefix (``local`` covers ``local.slurm.partition``)."""
    logger_keys = [f"logger.{f.name}" for f in dataclasses.fields(LoggerConfig)]
    keys = [*LAYOUT_KEYS, *NON_RESULT_KEYS, *logger_keys]
    keys += [str(k).lstrip("+~") for k in (sweep_params or {})]
    return list(dict.fromkeys(keys))


def _short(text: str, keep: int) -> str:
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{text[:keep]}~{digest}"


def job_dirname(overrides: Sequence[str], exclude_keys: Sequence[str] = ()) -> str:
    """A job folder name from the job's overrides: Hydra's ``override_dirname`` rule (``key=value`` items sorted,
    joined by ``,``), leaving out every key :func:`is_excluded` by ``exclude_keys`` and the non-result keys; a value
    that is long or holds a path separator is cut and suffixed with a hash of itself, and so is a name that is still
    too long: every distinct set of result-changing overrides gets its own valid folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    excluded = [*exclude_keys, *NON_RESULT_KEYS]
    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    items = []
    for line in sorted(o.input_line for o in parsed if not is_excluded(o.key_or_group, excluded)):
        key, sep, value = line.partition("=")
        if "/" in value or len(line) > _ITEM_MAX:
            value = _short(value.replace("/", "_"), 12)
        items.append(f"{key.replace('/', '.')}{sep}{value}")
    name = ",".join(items)
    return _short(name, MAX_DIRNAME - 10) if len(name) > MAX_DIRNAME else name
