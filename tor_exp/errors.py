"""User-facing errors: the CLI prints them as one line naming the bad key or value, never a traceback."""


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key, e.g. ``reduction.q=1.5: must be in [0, 1]``."""
