"""User-facing errors: the CLI prints them as one line naming the bad key or value, never a traceback."""
from __future__ import annotations

import sys
from typing import NoReturn

#: exit status of bad user input (a bad key, value, path or file)
ERROR_EXIT = 2


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key, e.g. ``reduction.q=1.5: must be in [0, 1]``."""


def one_line(err: BaseException) -> str:
    """A Hydra / OmegaConf composition error as one line: Hydra wraps the useful message (with ``full_key``) in a
    cause, so show both. Every entry point words the same bad override the same way through this."""
    parts = [str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__]
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        lines = [line.strip() for line in str(cause).strip().splitlines()]
        key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
        parts.append(lines[0] + (f" (key: {key})" if key else ""))
    return ": ".join(parts)


def fail(message: str) -> NoReturn:
    """End the program with ``error: <message>`` on one line of stderr and exit code 2 (in a data-parallel run,
    every rank ends with the same line: :func:`tor_exp.distributed.end_all`)."""
    from tor_exp import distributed

    distributed.end_all(f"error: {message}", ERROR_EXIT)
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(ERROR_EXIT)
