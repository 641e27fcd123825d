"""``pkg://<package>/<sub/path>`` paths: files shipped inside an installed package, found from any cwd; and whether
an output folder can be written (checked before any work)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

from tor_exp.errors import ConfigError

PKG_PREFIX = "pkg://"


def resolve_pkg_path(path: str, key: str) -> str:
    """``pkg://tor_exp/reference/assets`` → that folder of the installed package; other paths unchanged.

    ``key`` names the config key in the error when the package is not installed.
    """
    if not path.startswith(PKG_PREFIX):
        return path
    package, _, sub = path[len(PKG_PREFIX):].partition("/")
    try:
        root = resources.files(package)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{key}={path!r}: package {package!r} is not installed") from err
    return str(root.joinpath(sub)) if sub else str(root)


def unwritable_folder(path: Path, *, keep: bool = True) -> Optional[str]:
    """Why files cannot be written into the folder ``path``, or None when they can: the one check of an output
    folder, for every entry point. Checked by writing and syncing one byte into a probe file, since permission bits
    say nothing for root or on a read-only mount (``/proc``), and a full disk still takes a new name but not its
    bytes. ``keep``: the folder is created (and stays, unless refused); otherwise nothing is created, and the probe goes into the
    nearest folder that exists (the work that writes there may still be refused later, and must leave nothing
    behind; another process may be creating the same parents)."""
    import os
    import tempfile

    path = Path(path).expanduser().absolute()
    where = path if keep else next((p for p in (path, *path.parents) if p.exists()), path)
    if where.exists() and not where.is_dir():
        return f"{where} is a file, not a folder"
    missing = [p for p in (path, *path.parents) if not p.exists()] if keep else []  # deepest first
    try:
        if keep:
            path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=where, prefix=".tor_exp-write-test-")
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        for folder in missing:  # a refused folder leaves nothing behind
            try:
                folder.rmdir()
            except OSError:
                break
        where = next((p for p in (where, *where.parents) if p.exists()), where)
        return f"cannot write in {where} ({err.strerror or str(err) or type(err).__name__})"
    return None


def launch_dir() -> str:
    """The directory the user launched from: Hydra's original cwd inside a job (``hydra.job.chdir=true`` moves
    the job into its own folder, and a submitit job starts wherever its launcher put it), else the cwd. Relative
    paths in a config mean this directory, wherever the job runs."""
    import os

    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.cwd)
    except (ValueError, AttributeError, ImportError):
        return os.getcwd()


def datasets_cache() -> str:
    """The folder the ``datasets`` library caches into, as it computes it (its setting if already imported)."""
    import os
    import sys

    loaded = sys.modules.get("datasets.config")
    if loaded is not None:
        return str(loaded.HF_DATASETS_CACHE)
    home = os.path.expanduser(os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"),
                                                                  "huggingface")))
    return os.path.expanduser(os.getenv("HF_DATASETS_CACHE", os.path.join(home, "datasets")))


def usable_datasets_cache() -> str:
    """A datasets cache that takes files, checked before the model loads: lm-eval's tasks (the bundled offline
    ones too) go through ``datasets``, which writes its cache under HOME; with an unwritable HOME that was a
    ``FileNotFoundError`` after the model had loaded. An unwritable cache is replaced by a folder in the temp dir
    (``HF_DATASETS_CACHE``, for this process and its children; logged); where neither takes files, one-line
    :class:`~tor_exp.errors.ConfigError`. Returns the folder in use."""
    import logging
    import os
    import sys
    import tempfile

    current = datasets_cache()
    problem = unwritable_folder(Path(current).expanduser())
    if problem is None:
        return current
    fallback = os.path.join(tempfile.gettempdir(), f"tor_exp-datasets-cache-{os.getuid()}")
    other = unwritable_folder(Path(fallback))
    if other is not None:
        raise ConfigError(f"HF_DATASETS_CACHE={current}: {problem}, and the fallback {fallback}: {other}; set "
                          "HF_DATASETS_CACHE (or HF_HOME) to a writable folder")
    os.environ["HF_DATASETS_CACHE"] = fallback
    loaded = sys.modules.get("datasets.config")
    if loaded is not None:  # its paths were computed at import
        loaded.HF_DATASETS_CACHE = Path(fallback)
        loaded.DOWNLOADED_DATASETS_PATH = Path(fallback, loaded.DOWNLOADED_DATASETS_DIR)
        loaded.EXTRACTED_DATASETS_PATH = Path(fallback, loaded.DOWNLOADED_DATASETS_DIR,
                                              loaded.EXTRACTED_DATASETS_DIR)
    logging.getLogger(__name__).warning("datasets cache %s: %s; using %s instead (set HF_DATASETS_CACHE to "
                                        "choose)", current, problem, fallback)
    return fallback
