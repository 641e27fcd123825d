"""Schema for the `logger` config group."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

from tor_exp.errors import ConfigError

BACKENDS = ("disk", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
#: WANDB_MODE spellings wandb itself accepts, as the mode they mean
_ENV_MODES = {"online": "online", "offline": "offline", "disabled": "disabled", "dryrun": "offline", "run": "online"}
DEFAULT_MODE = "offline"
DEFAULT_PROJECT = "tor_exp"


@dataclass
class LoggerConfig:
    """``mode`` / ``project`` / ``entity``: an explicit value wins, then W&B's own environment variables
    (``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_ENTITY``), then the defaults (offline, ``tor_exp``, your default
    entity); see :meth:`resolved`. Null in the config means "not set here"."""

    backend: str = "disk"
    mode: Optional[str] = None
    project: Optional[str] = None
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    #: seconds W&B may take to start a run (online: reach the server) before the job fails, in one line
    init_timeout: float = 30.0
    #: an online run that cannot start (no API key, server unreachable) logs offline instead of failing
    offline_fallback: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"logger.backend={self.backend!r}: must be one of {', '.join(BACKENDS)}")
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ConfigError(f"logger.mode={self.mode!r}: must be one of {', '.join(WANDB_MODES)}")
        if isinstance(self.init_timeout, bool) or not isinstance(self.init_timeout, (int, float)) \
                or not self.init_timeout > 0:
            raise ConfigError(f"logger.init_timeout={self.init_timeout!r}: must be a number of seconds > 0")
        if self.backend == "wandb" and self.mode is None:
            env_mode(os.environ)  # a bad WANDB_MODE fails before anything runs, not after the evaluation

    def resolved(self, environ: Optional[Mapping[str, str]] = None) -> "LoggerConfig":
        """This config with ``mode``, ``project`` and ``entity`` filled: explicit > ``WANDB_*`` > defaults."""
        env = os.environ if environ is None else environ
        return replace(self, mode=self.mode or env_mode(env) or DEFAULT_MODE,
                       project=self.project or env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                       entity=self.entity or env.get("WANDB_ENTITY") or None)


def env_mode(environ: Mapping[str, str]) -> Optional[str]:
    """The mode ``WANDB_MODE`` asks for (None when unset); a value W&B does not know is a one-line error."""
    value = (environ.get("WANDB_MODE") or "").strip()
    if not value:
        return None
    if value.lower() not in _ENV_MODES:
        raise ConfigError(f"WANDB_MODE={value!r}: must be one of {', '.join(WANDB_MODES)}")
    return _ENV_MODES[value.lower()]
