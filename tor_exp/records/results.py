"""results.json: the durable record of a run, written before (and independently of) any W&B upload.

Its format and the rules that read it (resume, damaged files, setting a record aside); the writing itself goes
through :mod:`tor_exp.records.folder`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from tor_exp.records.checkpoint import fingerprint
from tor_exp.records.config import LoggerConfig
from tor_exp.records.files import atomic_write
from tor_exp.records.keys import config_hash

RESULTS_FILE = "results.json"
#: folder of the per-request samples a record lists (``eval.log_samples``); set aside with its record
SAMPLES_DIR = "samples"
_VERSIONED = ("torch", "transformers", "lm_eval", "hydra-core", "omegaconf", "wandb", "mamba_ssm", "causal_conv1d", "tor_exp")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def git_commit() -> str | None:
    """Commit of the source tree tor_exp runs from (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_metadata(model: Any = None, device: Any = None) -> dict[str, Any]:
    """Versions, commit and machine; with ``model``, also ``kernels``: the kernel each part of its forward ran
    (:func:`tor_exp.models.kernels.kernels_used`, e.g. ``{"mamba2_scan": "torch", ...}``)."""
    import torch

    device_name = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                   else platform.processor() or platform.machine())
    meta = {"versions": package_versions(), "git_commit": git_commit(), "host": platform.node(),
            "device_name": device_name, "torch_threads": torch.get_num_threads()}
    if model is not None:
        from tor_exp.models.kernels import kernels_used

        meta["kernels"] = kernels_used(model, device)
    return meta


def _resolved(job_config: Any) -> dict[str, Any]:
    if isinstance(job_config, dict):
        return job_config
    from omegaconf import OmegaConf

    return OmegaConf.to_container(job_config, resolve=True)  # type: ignore[return-value]


def recorded_fingerprint(record: dict[str, Any]) -> str | None:
    """The checkpoint fingerprint a record was computed on (None: an older record that does not say)."""
    checkpoint = record.get("checkpoint")
    return checkpoint.get("fingerprint") if isinstance(checkpoint, dict) else None


def same_run(record: dict[str, Any] | None, job_config: Any, current: str | None = None) -> bool:
    """``record`` is a complete result of exactly this job: the same config (hash) on the same weights (the
    fingerprint of what is at ``model.path`` now, ``current`` when already computed). A record that does not
    name its weights is trusted by nobody."""
    if not record or record.get("status") != "complete":
        return False
    resolved = _resolved(job_config)
    if record.get("config_hash") != config_hash(resolved):
        return False
    current = current if current is not None else fingerprint(resolved)
    return current is not None and recorded_fingerprint(record) == current


def is_complete(out_dir: str | os.PathLike, job_config: Any) -> bool:
    """The resume rule: ``out_dir`` holds a complete results.json of exactly this job (same config hash, same
    checkpoint fingerprint: :func:`same_run`) and nothing of it is missing (with ``logger=wandb``, its W&B
    upload: :func:`wandb_missing`).

    One function for the job's own resume check and the launchers' pre-submission filter, so a job the launcher
    leaves out is exactly a job that would have skipped itself. ``job_config``: the job's config (DictConfig,
    resolved here) or its resolved dict.
    """
    resolved = _resolved(job_config)
    previous = load_results(out_dir)
    return same_run(previous, resolved) and not wandb_missing(previous, resolved)  # type: ignore[arg-type]


def wandb_missing(record: dict[str, Any], job_config: Any) -> bool:
    """With ``logger=wandb`` (not disabled): the record's W&B upload has not completed in the mode asked for (an
    offline copy does not count for ``mode=online``). ``record["wandb"]``: ``{run_id, mode, logged}``."""
    logger = _resolved(job_config).get("logger") or {}
    if logger.get("backend") != "wandb":
        return False
    known = {f.name for f in dataclasses.fields(LoggerConfig)}
    mode = LoggerConfig(**{k: v for k, v in logger.items() if k in known}).resolved().mode
    if mode == "disabled":
        return False
    done = record.get("wandb") if isinstance(record.get("wandb"), dict) else {}
    return not (done.get("logged") and (mode == "offline" or done.get("mode") == "online"))


def to_json(results: dict[str, Any]) -> str:
    """A record as results.json holds it (tensors and numpy scalars as numbers)."""
    return json.dumps(results, indent=2, sort_keys=False, default=_json_default)


def write_results(out_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Atomic write: a killed run never leaves a half-written results.json that resume would trust (no lock, no
    fallback: for scripts; a job writes through :class:`tor_exp.records.folder.RunFolder`)."""
    return atomic_write(Path(out_dir) / RESULTS_FILE, to_json(results))


def read_results(out_dir: str | os.PathLike) -> tuple[dict[str, Any] | None, str | None]:
    """(record, problem): the results.json of ``out_dir`` as a dict, or None with why it is unusable
    (``problem`` is None when there simply is no file)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at line {err.lineno})"
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__}, not a results record"
    return data, None


def load_results(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The results record of ``out_dir``, or None when there is none or it is unusable."""
    return read_results(out_dir)[0]


def set_aside(out_dir: str | os.PathLike, why: str) -> Path:
    """Move ``out_dir``/results.json to ``results.json.<why>-<UTC time>`` (never overwriting another) and its
    samples folder to ``samples.<why>-<UTC time>`` (so the next run's samples never stand beside a record they do
    not belong to); returns the record's new path: records are moved, never deleted."""
    import datetime as dt

    folder = Path(out_dir)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    suffix, n = f"{why}-{stamp}", 1
    while (folder / f"{RESULTS_FILE}.{suffix}").exists() or (folder / f"{SAMPLES_DIR}.{suffix}").exists():
        n += 1
        suffix = f"{why}-{stamp}-{n}"
    if (folder / SAMPLES_DIR).is_dir():
        os.replace(folder / SAMPLES_DIR, folder / f"{SAMPLES_DIR}.{suffix}")
    target = folder / f"{RESULTS_FILE}.{suffix}"
    os.replace(folder / RESULTS_FILE, target)
    return target


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
