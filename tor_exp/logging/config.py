"""Schema for the `logger` config group."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tor_exp.errors import ConfigError

BACKENDS = ("disk", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class LoggerConfig:
    backend: str = "disk"
    mode: str = "offline"
    project: str = "tor_exp"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"logger.backend={self.backend!r}: must be one of {', '.join(BACKENDS)}")
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"logger.mode={self.mode!r}: must be one of {', '.join(WANDB_MODES)}")
