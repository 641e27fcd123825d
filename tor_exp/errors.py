"""User-facing errors: the CLI prints them as one line naming the bad key or value, never a traceback."""
from __future__ import annotations

import sys
from typing import NoReturn

#: exit status of bad user input (a bad key, value, path or file)
ERROR_EXIT = 2


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key, e.g. ``reduction.q=1.5: must be in [0, 1]``."""


def fail(message: str) -> NoReturn:
    """End the program with ``error: <message>`` on one line of stderr and exit code 2."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(ERROR_EXIT)
