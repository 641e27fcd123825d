"""`python -m tor_exp [overrides]`: one experiment per command, Hydra multirun (`-m`) for sweeps.

Bad input ends with one line on stderr naming the bad key or value and exit code 2, never a traceback. Ctrl-C
(SIGINT) and SIGTERM end with one line too, exit code 130 / 143: an interrupted job writes nothing (its record is
renamed into place only when complete), and a sweep names the jobs that finished.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Any, Iterator

from tor_exp.errors import fail

_INFO_FLAGS = ("-h", "--help", "--hydra-help", "--info", "--cfg", "-c", "--shell-completion", "-sc")
#: exit status of a run ended by SIGINT / SIGTERM (the shell's 128 + signal number)
INTERRUPT_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _split_argv(argv: list[str]) -> tuple[list[str], bool]:
    """The command line's overrides (flags left out) and whether this is a multirun."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    return [a for a in argv if not a.startswith("-")], multirun


def check_output_dir(path: str, key: str) -> None:
    """The output dir can be created and takes a file (tried, not guessed from permissions: root may lack the
    right to write in /proc, and a full disk has the permission but no room)."""
    from tor_exp.paths import unwritable_folder

    problem = unwritable_folder(path, keep=False)
    if problem is not None:
        fail(f"{key}={path}: {problem}")


def check_wandb(logger: Any) -> None:
    """An online W&B without an API key is one line before any job starts (each job also starts its W&B run
    before its work, which catches an unreachable server); with ``logger.offline_fallback`` the job logs offline."""
    if logger.backend != "wandb" or logger.offline_fallback or logger.resolved().mode != "online":
        return
    from tor_exp.errors import ConfigError
    from tor_exp.records.wandb_logger import online_problem

    problem = online_problem(logger)
    if problem is not None:
        raise ConfigError(problem)


def precheck(argv: list[str]) -> None:
    """Compose and validate every job before Hydra starts, so errors are one line (Hydra would print several,
    and a bad job of a multirun would fail inside a launcher, buried in its log) and nothing runs."""
    from omegaconf import OmegaConf

    from tor_exp.config import compose_dict, config_error_line, sweep_jobs, validate
    from tor_exp.errors import ConfigError

    overrides, multirun = _split_argv(argv)
    job: list[str] = overrides
    try:
        if not multirun:
            cfg = compose_dict(overrides, return_hydra_config=True)
            check_wandb(validate(cfg).logger)
            check_output_dir(cfg.hydra.run.dir, "hydra.run.dir")
            return
        jobs = sweep_jobs(overrides)
        primary = compose_dict(overrides, return_hydra_config=True, multirun=True)
        check_output_dir(primary.hydra.sweep.dir, "hydra.sweep.dir")
        # a Slurm job runs on a node of its own: this machine's GPUs say nothing about it
        here = "Slurm" not in str(OmegaConf.select(primary, "hydra.launcher._target_", default="") or "")
        for job in jobs:
            check_wandb(validate(compose_dict(job, return_hydra_config=True), check_device=here).logger)
    except ConfigError as err:
        fail(_in_job(job, str(err), multirun))
    except Exception as err:  # hydra / omegaconf composition errors
        fail(_in_job(job, config_error_line(err), multirun))


def _in_job(job: list[str], message: str, multirun: bool) -> str:
    shown = " ".join(o for o in job if not o.startswith("hydra."))
    return f"job [{shown}]: {message}" if multirun else message


# ------------------------------------------------------------------------------------------------ interrupts
class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is, as Python raises KeyboardInterrupt for SIGINT."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def interrupted_message(multirun: bool) -> str:
    """What an interrupted command leaves: nothing of the job that was running; in a sweep, the finished jobs."""
    if not multirun:
        return "interrupted: nothing written for this job; rerun with resume=true"
    from tor_exp.records.folder import finished_records

    done = finished_records()
    listed = f"{len(done)} job(s) finished ({', '.join(str(p) for p in done)})" if done else "no job finished"
    return f"interrupted: {listed}; nothing written for the job that was running; rerun with resume=true"


@contextlib.contextmanager
def one_line_interrupts(multirun: bool) -> Iterator[None]:
    """SIGINT / SIGTERM → one line on stderr and exit code 130 / 143, no traceback. Jobs release their folders
    while the interrupt unwinds (their records are never half-written), so there is nothing else to clean up."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    on_int, on_term = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except KeyboardInterrupt as err:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
        from tor_exp import distributed

        # data parallel: a launcher ends the other ranks when one fails; they end with that rank's line
        failure = distributed.wait_for_failure_line() if distributed.active() else None
        if failure is not None:
            sys.stderr.write(failure[0] + "\n")
            raise SystemExit(failure[1]) from None
        sys.stderr.write(interrupted_message(multirun) + "\n")
        raise SystemExit(INTERRUPT_EXIT[signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT]) from None
    finally:
        signal.signal(signal.SIGINT, on_int)
        signal.signal(signal.SIGTERM, on_term)


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    """Hydra's job logging replaces the root logger's handlers with its own (bound to the sys.stdout of that
    moment): put back what was there, so a caller that runs the entry point in-process (tests, notebooks) is not
    left with handlers writing to a stream that is closed by then."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                with contextlib.suppress(Exception):
                    handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:]
    from tor_exp import distributed

    with one_line_interrupts(_split_argv(argv)[1]), restored_logging(), distributed.ending_together():
        _main(argv)


def join_data_parallel(argv: list[str]) -> list[str]:
    """Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1): join the other processes and take rank
    0's output folders (Hydra's default ones hold the start time, which differs between processes), so every rank
    runs the same job in the same folder. Returns the command line to run (``argv`` itself for one process)."""
    from tor_exp import distributed

    if distributed.launched_world_size() <= 1 or any(a in _INFO_FLAGS for a in argv):
        return argv
    from omegaconf import OmegaConf

    from tor_exp.config import compose_dict

    overrides, multirun = _split_argv(argv)
    distributed.init_from_env()
    dirs = None
    if distributed.is_main():
        cfg = compose_dict(overrides, return_hydra_config=True, multirun=multirun)
        target = str(OmegaConf.select(cfg, "hydra.launcher._target_") or "")
        dirs = (str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir), "submitit" in target or "tor_exp_launcher" in target)
    run_dir, sweep_dir, submits = distributed.broadcast_object(dirs)
    if multirun and submits:
        fail("launcher=local/slurm inside a data-parallel launch: each process would submit the sweep; run the "
             "sweep from one process with hydra.launcher.tasks_per_node=N instead")
    kept = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    return kept + [f"hydra.run.dir={_quoted(run_dir)}", f"hydra.sweep.dir={_quoted(sweep_dir)}"]


def _quoted(value: str) -> str:
    """A Hydra override value as a quoted string (paths may hold characters its grammar reserves)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _main(argv: list[str]) -> None:
    from tor_exp.config import expand_model_dirs
    from tor_exp.errors import ConfigError

    try:  # model=<checkpoint dir> means model=local model.path=<dir>, for Hydra's own parsing too
        argv = [b for a in argv for b in ([a] if a.startswith("-") else expand_model_dirs([a]))]
    except ConfigError as err:
        fail(str(err))
    sys.argv = [sys.argv[0], *argv]
    if not any(a in _INFO_FLAGS for a in argv):
        try:
            precheck(argv)
        except SystemExit as err:
            from tor_exp import distributed

            distributed.say_before_exit(err.code if isinstance(err.code, int) else 1)
            raise
        joined = join_data_parallel(argv)
        if joined is not argv:
            sys.argv = [sys.argv[0], *joined]  # Hydra reads its overrides from sys.argv

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
