"""`python -m tor_exp [overrides]`: one experiment per command, Hydra multirun (`-m`) for sweeps.

Bad input ends with one line on stderr naming the bad key or value and exit code 2, never a traceback.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

_ERROR_EXIT = 2


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(_ERROR_EXIT)


def _user_overrides(argv: list[str]) -> tuple[list[str], bool]:
    """Overrides that shape the job config (hydra.* and flags excluded) and whether this is a multirun."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    return overrides, multirun


def precheck(argv: list[str]) -> None:
    """Compose and validate before Hydra starts, so errors are one line (Hydra would print several)."""
    from tor_exp.config import compose
    from tor_exp.errors import ConfigError

    overrides, multirun = _user_overrides(argv)
    if multirun:
        # sweep values ("a,b", range(...)) are not composable as one job; each job validates itself.
        return
    try:
        compose(overrides)
    except ConfigError as err:
        fail(str(err))
    except Exception as err:  # hydra / omegaconf composition errors
        fail(_one_line(err))


def _one_line(err: BaseException) -> str:
    """Hydra wraps the useful message (with full_key) in a cause: show both on one line."""
    parts = [str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__]
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        lines = [line.strip() for line in str(cause).strip().splitlines()]
        key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
        parts.append(lines[0] + (f" (key: {key})" if key else ""))
    return ": ".join(parts)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:]
    if not any(a in ("-h", "--help", "--hydra-help", "--info", "--cfg", "-c", "--shell-completion", "-sc") for a in argv):
        precheck(argv)

    import hydra
    from omegaconf import DictConfig

    from tor_exp.config import config_dir, register_configs
    from tor_exp.errors import ConfigError

    register_configs()
    try:
        conf = config_dir()
    except ConfigError as err:
        fail(str(err))

    @hydra.main(config_path=conf, config_name="config", version_base="1.3")
    def _job(cfg: DictConfig) -> float | None:
        from tor_exp.run import run

        try:
            return run(cfg).get("headline")  # a sweeper (e.g. an optimiser) gets the headline number
        except ConfigError as err:
            fail(str(err))

    _job()


if __name__ == "__main__":
    main()
