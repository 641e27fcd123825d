"""`python -m tor_exp [overrides]`: one experiment per command, Hydra multirun (`-m`) for sweeps.

Bad input ends with one line on stderr naming the bad key or value and exit code 2, never a traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from tor_exp.errors import fail, one_line


def _split_argv(argv: list[str]) -> tuple[list[str], bool]:
    """The command line's overrides (flags left out) and whether this is a multirun."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    return [a for a in argv if not a.startswith("-")], multirun


def check_output_dir(path: str, key: str) -> None:
    """The output dir can be created and written: its nearest existing ancestor is a writable folder."""
    target = Path(path).expanduser().absolute()
    ancestor = next(p for p in (target, *target.parents) if p.exists())
    if not ancestor.is_dir():
        fail(f"{key}={path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        fail(f"{key}={path}: {ancestor} is not writable")


def precheck(argv: list[str]) -> None:
    """Compose and validate every job before Hydra starts, so errors are one line (Hydra would print several,
    and a bad job of a multirun would fail inside a launcher, buried in its log) and nothing runs."""
    from tor_exp.config import compose_dict, sweep_jobs, validate
    from tor_exp.errors import ConfigError

    overrides, multirun = _split_argv(argv)
    job: list[str] = overrides
    try:
        if not multirun:
            cfg = compose_dict(overrides, return_hydra_config=True)
            validate(cfg)
            check_output_dir(cfg.hydra.run.dir, "hydra.run.dir")
            return
        jobs = sweep_jobs(overrides)
        primary = compose_dict(overrides, return_hydra_config=True, multirun=True)
        check_output_dir(primary.hydra.sweep.dir, "hydra.sweep.dir")
        for job in jobs:
            validate(compose_dict(job))
    except ConfigError as err:
        fail(_in_job(job, str(err), multirun))
    except Exception as err:  # hydra / omegaconf composition errors
        fail(_in_job(job, one_line(err), multirun))


def _in_job(job: list[str], message: str, multirun: bool) -> str:
    shown = " ".join(o for o in job if not o.startswith("hydra."))
    return f"job [{shown}]: {message}" if multirun else message


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
