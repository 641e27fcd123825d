"""``pkg://<package>/<sub/path>`` paths: files shipped inside an installed package, found from any cwd."""
from __future__ import annotations

from importlib import resources

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
