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
    """Why files cannot be written into the folder ``path`` (created if missing), or None when they can; checked
    by writing a probe file, since permission bits say nothing for root or on a read-only mount. Folders it created
    are removed again after a refusal, and also after success unless ``keep`` (the work that writes there may
    still be refused later, and must leave nothing behind)."""
    import os
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        return "exists and is not a folder"
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first

    def remove_created() -> None:
        for folder in missing:
            try:
                folder.rmdir()
            except OSError:
                return

    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tor_exp-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        remove_created()
        return err.strerror or str(err)
    if not keep:
        remove_created()
    return None
