"""Which weights a record was computed on: a fingerprint of the checkpoint's files, part of a record's identity.

A config names its checkpoint by a path (``model.path``); the files there can be replaced while the path stays.
Resume must not trust the string, so a record stores ``checkpoint: {path, fingerprint, files}`` and resume (and
the launchers' pre-submission filter, through :func:`tor_exp.records.results.is_complete`) compares the
fingerprint of what is at the path now.

Cheap for multi-GB checkpoints: small files (config.json, the weight index, tokenizer files: at most
:data:`WHOLE_FILE_MAX` bytes) are hashed whole; a weight file by its name, size and its first and last MiB (a
safetensors file's header, with every tensor's name, dtype, shape and offsets, is at its start). A random tiny
model (``model.source: tiny``) has no files: its fingerprint is its model config. Random weights at a checkpoint's
shape (``model.source: random``) read its config.json only: their fingerprint is the model config and that file's
digest (no weight file is hashed, none is read), and the record says ``weights: random``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from tor_exp.errors import ConfigError
from tor_exp.paths import PKG_PREFIX, resolve_pkg_path

#: file name endings that make up a checkpoint: its configs, weight index, weights and tokenizer
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".model", ".tiktoken", ".txt")
#: files up to this size are hashed whole; larger ones by their first and last :data:`EDGE_BYTES`
WHOLE_FILE_MAX = 4 << 20
EDGE_BYTES = 1 << 20


def checkpoint_dir(model: Mapping[str, Any]) -> Optional[Path]:
    """The folder holding ``model``'s checkpoint files (a resolved ``model`` config node): ``model.path`` as a
    folder, a ``pkg://`` folder of an installed package, or a hub id's snapshot in the local Hugging Face cache
    (never downloads). None for a random tiny model or a checkpoint not (yet) on this machine."""
    path = model.get("path")
    if model.get("source") == "tiny" or not path:
        return None
    path = str(path)
    if path.startswith(PKG_PREFIX):
        try:
            path = resolve_pkg_path(path, "model.path")
        except ConfigError:  # the package is not installed: nothing here to fingerprint
            return None
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder.absolute()
    if folder.exists() or "/" not in path or path.startswith((".", "/", "~")):
        return None
    try:  # a hub id: the snapshot folder its cached config.json is in
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json", revision=model.get("revision") or None)
    except Exception:  # noqa: BLE001 - an id the cache does not know is simply "not here"
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _file_digest(path: Path, size: int) -> str:
    """sha256 of the whole file when small, else of its size, first and last :data:`EDGE_BYTES`."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= WHOLE_FILE_MAX:
            digest.update(fh.read())
        else:
            digest.update(str(size).encode())
            digest.update(fh.read(EDGE_BYTES))
            fh.seek(size - EDGE_BYTES)
            digest.update(fh.read(EDGE_BYTES))
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> dict[str, tuple[int, str]]:
    """name → (size, digest) of the checkpoint files directly in ``folder`` (symlinks followed, as in the HF
    cache); unreadable files are skipped (the loader reports them)."""
    files: dict[str, tuple[int, str]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.endswith(CHECKPOINT_SUFFIXES) or entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            size = entry.stat().st_size
            files[entry.name] = (size, _file_digest(Path(entry.path), size))
        except OSError:
            continue
    return files


def checkpoint_record(model: Mapping[str, Any]) -> dict[str, Any]:
    """``{path, fingerprint, files}`` of the checkpoint ``model`` (a resolved ``model`` config node) names, as a
    record stores it: ``files`` maps each file to its size. A random tiny model's fingerprint is its model config
    (``files`` empty); a checkpoint not on this machine has fingerprint None (it matches no record)."""
    if model.get("source") == "random":
        return random_record(model)
    folder = checkpoint_dir(model)
    if model.get("source") == "tiny" or not model.get("path"):
        blob = json.dumps(dict(model), sort_keys=True, default=str)
        return {"path": None, "fingerprint": "config-" + hashlib.sha256(blob.encode()).hexdigest()[:16],
                "files": {}}
    if folder is None:
        return {"path": str(model.get("path")), "fingerprint": None, "files": {}}
    files = checkpoint_files(folder)
    blob = json.dumps(files, sort_keys=True)
    return {"path": str(folder), "fingerprint": hashlib.sha256(blob.encode()).hexdigest()[:16],
            "files": {name: size for name, (size, _) in files.items()}}


def random_record(model: Mapping[str, Any]) -> dict[str, Any]:
    """The record of random weights at the shape of ``model.path`` (``model.source: random``): the shape's
    config.json (when on this machine; the paper's hub ids are known without it) is the only file read, so it is
    the only file fingerprinted, with the model config (its seed draws the weights)."""
    folder = checkpoint_dir(model)
    shape_file = folder / "config.json" if folder is not None else None
    files = {}
    if shape_file is not None and shape_file.is_file():
        size = shape_file.stat().st_size
        files["config.json"] = (size, _file_digest(shape_file, size))
    blob = json.dumps({"model": dict(model), "files": files}, sort_keys=True, default=str)
    return {"path": str(folder) if folder is not None else str(model.get("path")), "weights": "random",
            "seed": model.get("seed"), "fingerprint": "random-" + hashlib.sha256(blob.encode()).hexdigest()[:16],
            "files": {name: size for name, (size, _) in files.items()}}


def fingerprint(job_config: Mapping[str, Any]) -> Optional[str]:
    """The fingerprint of the checkpoint a resolved job config loads (see :func:`checkpoint_record`)."""
    model = job_config.get("model")
    return checkpoint_record(model)["fingerprint"] if isinstance(model, Mapping) else None
