"""Sweep launchers: hydra-submitit-launcher's Slurm and local launchers, plus what tor_exp's sweeps need.

They subclass the plugin's public ``SlurmLauncher``/``LocalLauncher`` and keep its settings (``params``), job
body (``__call__``) and requeue hook (``checkpoint``); they replace its ``launch``, which submits every job, then
waits for them in order and stops at the first failure. Each addition lives in one place:

* nothing finished is submitted again: :func:`plan_job` (the job's own output dir and resolved config, the job's
  own resume rule :func:`tor_exp.records.results.is_complete`); the other jobs keep their ``hydra.job.num``;
* timed-out Slurm jobs are requeued: :class:`SlurmConf`'s ``max_num_timeout`` (submitit requeues);
* a GPU set per local job, never all on GPU 0, never silently the CPU: :meth:`LocalLauncher.submit`;
* a Slurm refusal is one line naming the ``hydra.launcher`` key, exit code 2: :func:`refusal_message` (sbatch
  said no), :func:`wait_or_cancel` (Slurm accepted jobs it will never start);
* failed jobs end the sweep, one line each, exit code 1: :func:`results_or_exit`.

Hydra instantiates launchers only from the ``hydra_plugins`` namespace package: the classes it sees are thin
subclasses in ``hydra_plugins/tor_exp_launcher/launchers.py``, which also stores the schemas as
``hydra/launcher: tor_exp_slurm | tor_exp_local`` (selected by ``conf/launcher/{slurm,local}.yaml``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import tor_exp.config  # noqa: F401  (job folder resolvers, before a job process resolves its folder)
from tor_exp.errors import fail

log = logging.getLogger(__name__)

JOB_FAILED_EXIT = 1  # a job failed (bad user input exits with 2)
# stands in for the scheduler's job id while jobs are planned: a job folder that contains it is unknown before
# submission, so such a job is always submitted (it still skips itself when complete)
UNKNOWN_JOB_ID = "tor_exp-job-id-unknown-before-submission"


# ----------------------------------------------------------------------------------------------- schemas
@dataclass
class SlurmConf(SlurmQueueConf):
    """hydra-submitit-launcher's Slurm schema; timed-out jobs are requeued (they are idempotent)."""

    _target_: str = "hydra_plugins.tor_exp_launcher.launchers.SlurmLauncher"
    max_num_timeout: int = 3


@dataclass
class LocalConf(LocalQueueConf):
    """hydra-submitit-launcher's local schema with a GPU set per job.

    ``gpus_per_node``: GPUs per job; null = 1 when GPUs are visible and the jobs may use them (device auto or
    cuda), else 0. ``array_parallelism``: jobs running at once; null = one per GPU set (GPU jobs) or
    CPUs // cpus_per_task (CPU jobs). ``setup``: shell lines run before each job.
    """

    _target_: str = "hydra_plugins.tor_exp_launcher.launchers.LocalLauncher"
    gpus_per_node: Optional[int] = None
    array_parallelism: Optional[int] = None
    setup: Optional[List[str]] = None


def register_launchers() -> None:
    """Store the schemas as Hydra's ``hydra/launcher`` options (called by the plugin module on Hydra's scan)."""
    cs = ConfigStore.instance()
    cs.store(group="hydra/launcher", name="tor_exp_slurm", node=SlurmConf(), provider="tor_exp")
    cs.store(group="hydra/launcher", name="tor_exp_local", node=LocalConf(), provider="tor_exp")


# ----------------------------------------------------------------------------------------------- planning
@dataclass
class PlannedJob:
    """One job of a sweep as it will run."""

    num: int
    overrides: List[str]
    device: str
    out_dir: Optional[Path]  # None: depends on the scheduler's job id
    complete: bool

    @property
    def label(self) -> str:
        return f"#{self.num} ({' '.join(filter_overrides(self.overrides)) or 'no overrides'})"

    def args(self) -> tuple:
        """The plugin's job body's arguments (``__call__``)."""
        return (self.overrides, "hydra.sweep.dir", self.num, f"job_id_for_{self.num}", Singleton.get_state())


@contextlib.contextmanager
def _hydra_config(cfg: DictConfig) -> Iterator[None]:
    """``cfg``'s hydra node as the active Hydra config (what interpolations into ``hydra`` read), as in the job."""
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    hydra_config.set_config(cfg)
    try:
        yield
    finally:
        hydra_config.cfg = saved


def plan_job(config_loader: Any, master_config: DictConfig, overrides: Sequence[str], num: int) -> PlannedJob:
    """Job ``num`` composed as the job body and Hydra's ``run_job`` will compose it (same config, same output
    dir, same resolution), and whether the job's own resume rule would skip it."""
    from tor_exp.records.results import is_complete

    cfg = config_loader.load_sweep_config(master_config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.id, cfg.hydra.job.num = UNKNOWN_JOB_ID, num
    with _hydra_config(cfg):
        out = os.path.abspath(os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                           str(OmegaConf.select(cfg, "hydra.sweep.subdir"))))
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = out
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    with _hydra_config(cfg):
        resolved: Dict[str, Any] = OmegaConf.to_container(task, resolve=True)  # type: ignore[assignment]
    known = UNKNOWN_JOB_ID not in out + json.dumps(resolved, default=str)
    complete = known and bool(resolved.get("resume", True)) and is_complete(out, resolved)
    return PlannedJob(num=num, overrides=list(overrides), device=str(resolved.get("device", "auto")),
                      out_dir=Path(out) if known else None, complete=complete)


def completed_return(job: PlannedJob) -> JobReturn:
    """What Hydra gets for a job left out because it is complete: its recorded headline, as the job returns."""
    from tor_exp.records.results import load_results

    ret = JobReturn(overrides=filter_overrides(job.overrides), status=JobStatus.COMPLETED)
    ret.return_value = (load_results(job.out_dir) or {}).get("headline") if job.out_dir else None
    return ret


# ----------------------------------------------------------------------------------------------- launchers
class SweepLauncher(submitit_launcher.BaseSubmititLauncher):
    """What both launchers add to the plugin's: plan, leave out complete jobs, submit the rest, report failures."""

    cluster = "abstract"  # submitit's executor name
    own_keys: frozenset[str] = frozenset()  # launcher keys tor_exp handles itself (not passed to submitit)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.job_devices: Dict[int, str] = {}  # job number → its device (pickled with the job, for __call__)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        jobs = [plan_job(self.hydra_context.config_loader, self.config, overrides, initial_job_idx + i)
                for i, overrides in enumerate(job_overrides)]
        pending = [job for job in jobs if not job.complete]
        sweep = self.config.hydra.sweep
        log.info(f"[tor_exp] {self.cluster} sweep in {sweep.dir}: {len(jobs)} job(s), {len(jobs) - len(pending)} "
                 f"already complete (resume=true, not submitted), {len(pending)} to run")
        for job in jobs:
            log.info(f"\t{job.label}" + (f": complete in {job.out_dir}" if job.complete else ""))
        returns = {job.num: completed_return(job) for job in jobs if job.complete}
        if pending:
            Path(str(sweep.dir)).mkdir(parents=True, exist_ok=True)
            if "mode" in sweep:
                os.chmod(str(sweep.dir), mode=int(str(sweep.mode), 8))
            self.job_devices = {job.num: job.device for job in pending}
            started = time.time()
            try:
                returns.update(results_or_exit(pending, self.submit(pending), self.params))
            except KeyboardInterrupt:  # Ctrl-C / SIGTERM (tor_exp.__main__): end the jobs before saying what was written
                self.stop()
                note_finished_since(pending, started)
                raise
        return [returns[job.num] for job in jobs]

    def stop(self) -> None:
        """End this sweep's running jobs on an interrupt (Slurm jobs run on without the submitting process)."""

    def submit(self, pending: List[PlannedJob]) -> List[Any]:
        """Submit the jobs (in order); their submitit job handles."""
        raise NotImplementedError

    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> JobReturn:
        """In the job: the plugin's job body, once GPUs given are known to be GPUs used."""
        check_gpus_usable(job_num, self.job_devices.get(job_num, "auto"))
        if not join_tasks():
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        from tor_exp import distributed

        with distributed.ending_together():  # a rank's exception: every rank ends with its line
            ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
            if ret.status == JobStatus.FAILED:  # Hydra caught the task's exception: tell the other ranks
                err = ret._return_value
                first = (str(err).strip().splitlines() or [""])[0]
                line = first if first.startswith("error: ") else \
                    f"error: rank {distributed.rank()}: {type(err).__name__}: {first}"
                distributed.end_all(line, JOB_FAILED_EXIT)
                distributed.abandon()
        return ret

    def executor(self, **params: Any) -> Any:
        """A submitit executor for the launcher keys (but tor_exp's own) and ``params``: keys the plugin's
        ``BaseQueueConf`` shares between clusters keep their names, the others get the cluster's prefix."""
        import submitit

        keys = {k: v for k, v in self.params.items() if k not in self.own_keys} | params
        init = {f"{self.cluster}_max_num_timeout": keys.pop("max_num_timeout")} if "max_num_timeout" in keys else {}
        executor = submitit.AutoExecutor(folder=keys.pop("submitit_folder"), cluster=self.cluster, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"{self.cluster}_{k}": v for k, v in keys.items()})
        return executor


class SlurmLauncher(SweepLauncher, submitit_launcher.SlurmLauncher):
    """One job array of the jobs still to run; sbatch refusals and jobs that never start as one line."""

    cluster = "slurm"

    def submit(self, pending: List[PlannedJob]) -> List[Any]:
        if shutil.which("sbatch") is None:
            fail("launcher=slurm: sbatch not found: this machine is not a Slurm submit node "
                 "(launchers/local_slurm.sh starts a single-node cluster to try it)")
        executor = self.executor()
        handles = submit_or_fail(lambda: executor.map_array(self, *zip(*[job.args() for job in pending])),
                                 self.params)
        array = str(handles[0].job_id).split("_")[0]
        log.info(f"[tor_exp] submitted Slurm job array {array}: {len(handles)} job(s) "
                 f"({', '.join('#' + str(job.num) for job in pending)}); logs in {self.params['submitit_folder']}")
        wait_or_cancel(array, handles, self.params)
        return handles


class LocalLauncher(SweepLauncher, submitit_launcher.LocalLauncher):
    """Jobs as local processes (submitit), each with its own GPU set, at most one job per set at a time."""

    cluster = "local"
    own_keys = frozenset({"gpus_per_node", "array_parallelism", "setup"})
    poll_s = 0.5
    #: seconds the jobs get to unwind after SIGINT (release their folders, write nothing) before SIGKILL
    stop_grace_s = 15.0

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.handles: List[Any] = []  # every job submitted, as submitted

    def __getstate__(self) -> Dict[str, Any]:
        """The launcher is pickled into each job: without the handles of the jobs submitted before it."""
        return {k: v for k, v in self.__dict__.items() if k != "handles"}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state, handles=[])

    def stop(self) -> None:
        """Interrupt: end the process tree of every job started (submitit's controller, the job, what it started),
        waiting until all have exited, so no job writes after the sweep has said what was written."""
        with ignored_interrupts():
            end_process_trees([int(h.job_id) for h in self.handles], self.stop_grace_s)

    def submit(self, pending: List[PlannedJob]) -> List[Any]:
        visible = visible_gpus()
        per_job = gpus_per_job(self.params.get("gpus_per_node"), visible, {job.device for job in pending})
        free = job_slots(visible, per_job, self.params.get("array_parallelism"), self.params.get("cpus_per_task"))
        log.info(f"[tor_exp] local: {len(free)} job(s) at a time, GPUs per job {per_job}"
                 + (f" (visible: {','.join(visible)})" if visible else " (no GPU visible)"))
        executor = self.executor(gpus_per_node=0)  # each job's GPUs are its CUDA_VISIBLE_DEVICES, set below
        setup = list(self.params.get("setup") or [])
        running: List[tuple[Any, tuple[str, ...]]] = []  # (handle, its GPU set)
        handles = []
        for job in pending:
            while not free:
                for entry in [entry for entry in running if entry[0].done()]:
                    running.remove(entry)
                    free.append(entry[1])
                if not free:
                    time.sleep(self.poll_s)
            slot = free.pop(0)
            gpus = ",".join(slot)
            executor.update_parameters(local_setup=[*setup, f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpus)}"])
            handles.append(executor.submit(self, *job.args()))
            self.handles.append(handles[-1])
            running.append((handles[-1], slot))
            log.info(f"\tstarted {job.label} with CUDA_VISIBLE_DEVICES={gpus!r}")
        return handles


@contextlib.contextmanager
def ignored_interrupts() -> Iterator[None]:
    """SIGINT / SIGTERM ignored while a sweep cleans up after an interrupt (a second Ctrl-C must not leave jobs
    running); the handlers in place before are put back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


#: submitit's local job controller (``python -m submitit.local._local``, started through ``sh`` with setup lines)
CONTROLLER_MODULE = "submitit.local._local"


def end_process_trees(pids: Sequence[int], grace_s: float) -> None:
    """End every process of the trees rooted at ``pids`` (submitit's local jobs) and wait for them: SIGINT to the
    job processes (a job unwinds like at Ctrl-C: it releases its folder and writes no record; submitit's job
    ignores SIGTERM), none to the roots and submitit's controllers (they end when their job has; interrupted
    they would print a traceback), SIGKILL for what is left after ``grace_s`` (children that outlived their
    parent are still in the set: collected before)."""
    import signal

    import psutil

    procs: Dict[int, Any] = {}

    def collect(roots: Sequence[Any]) -> None:
        for root in roots:
            with contextlib.suppress(psutil.Error):
                proc = root if isinstance(root, psutil.Process) else psutil.Process(root)
                for member in [proc, *proc.children(recursive=True)]:
                    procs.setdefault(member.pid, member)

    collect(pids)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            if proc.pid not in pids and CONTROLLER_MODULE not in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    if alive:
        collect(alive)  # anything they started meanwhile
        alive = [p for p in procs.values() if p.is_running()]
        log.warning(f"[tor_exp] {len(alive)} job process(es) still running {grace_s:g} s after SIGINT: killed")
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=30)


def note_finished_since(jobs: Sequence[PlannedJob], started: float) -> None:
    """Jobs of this sweep whose complete record was written since ``started`` (by their own processes), for the
    interrupt message's list of finished jobs."""
    from tor_exp.records.folder import note_finished
    from tor_exp.records.results import RESULTS_FILE, load_results

    for job in jobs:
        if job.out_dir is None:
            continue
        with contextlib.suppress(OSError):
            if (job.out_dir / RESULTS_FILE).stat().st_mtime >= started and \
                    (load_results(job.out_dir) or {}).get("status") == "complete":
                note_finished(job.out_dir)


def results_or_exit(jobs: Sequence[PlannedJob], handles: Sequence[Any], params: Dict[str, Any]) -> Dict[int, JobReturn]:
    """Every job's return, once all have ended; failed jobs end the sweep, one line each with the job's log."""
    returns: Dict[int, JobReturn] = {}
    failures: List[str] = []
    for job, handle in zip(jobs, handles):
        try:
            # raises when the job failed outside its task, or died without a result; a data-parallel job
            # (tasks_per_node=N) returns each rank's, rank 0's is the job's
            ret = handle.results()[0] if getattr(handle, "num_tasks", 1) > 1 else handle.result()
            with contextlib.redirect_stderr(io.StringIO()):  # Hydra prints "Error executing job ..." first
                _ = ret.return_value  # raises what the task raised (also submitit's "timed-out too many times")
        except Exception as err:
            failures.append(f"job {job.label} failed: {failure_reason(err, params)} (log: {handle.paths.stderr})")
        else:
            returns[job.num] = ret
    if failures:
        sys.stderr.write("".join(f"error: {line}\n" for line in failures))
        raise SystemExit(JOB_FAILED_EXIT)
    return returns


def failure_reason(err: BaseException, params: Dict[str, Any]) -> str:
    """The useful line of a job's failure: the job's own ``error: ...`` line (bad input inside the job), the
    exception that ended the trace submitit reports, the job's state when it left no result, else the
    exception's first line."""
    text = f"{type(err).__name__}: {err}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = next((line[len("error: "):] for line in lines if line.startswith("error: ")), None)
    if said is None and "failed during processing with trace:" in text:
        trace = text.split("with trace:", 1)[1].split("You can check full logs", 1)[0]
        said = next((line for line in reversed(trace.splitlines()) if line.strip().strip("-")), None)
    if said is None:  # died without a result (killed, cancelled, out of memory): Slurm's state says why
        said = next((f"{type(err).__name__}: the job {line}" for line in lines
                     if line.startswith("has not produced any output")), None)
    reason = (said or lines[0]).strip()
    if "timed-out too many times" in reason:
        reason += (f" (every attempt reached hydra.launcher.timeout_min={params.get('timeout_min')}; "
                   f"requeued max_num_timeout={params.get('max_num_timeout')} times)")
    return reason


# ----------------------------------------------------------------------------------------------- GPUs
def visible_gpus(environ: Optional[Dict[str, str]] = None) -> List[str]:
    """GPU ids jobs may be given: ``CUDA_VISIBLE_DEVICES``'s entries when it is set (indices or UUIDs, up to an
    invalid ``-1`` as CUDA reads it), else one index per GPU that ``nvidia-smi -L`` lists (none without it)."""
    env = os.environ if environ is None else environ
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        ids: List[str] = []
        for token in (t.strip() for t in value.split(",")):
            if not token or token.startswith("-"):
                break
            ids.append(token)
        return ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def gpus_per_job(requested: Optional[int], visible: Sequence[str], devices: set[str]) -> int:
    """GPUs each local job gets. Refuses the two silent failures: jobs that may use a GPU (device auto/cuda) left
    on the CPU of a GPU machine, and GPU requests on a machine without a visible GPU."""
    wants_gpu = bool(devices - {"cpu"})
    if requested is None:
        if "cuda" in devices and not visible:
            fail("device=cuda: no GPU is visible to launcher=local (CUDA_VISIBLE_DEVICES / nvidia-smi); use "
                 "device=cpu or device=auto")
        return 1 if visible and wants_gpu else 0
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        fail(f"hydra.launcher.gpus_per_node={requested!r}: must be null (one per job when GPUs are visible) or an "
             f"integer >= 0")
    if requested == 0:
        if visible and wants_gpu:
            fail(f"hydra.launcher.gpus_per_node=0: this machine has {len(visible)} visible GPU(s) and the jobs use "
                 f"device={'/'.join(sorted(devices - {'cpu'}))}, so they would run on the CPU; use "
                 f"gpus_per_node=1 (one job per GPU) or device=cpu")
        if "cuda" in devices:
            fail("device=cuda with hydra.launcher.gpus_per_node=0: the jobs would get no GPU")
        return 0
    if not visible:
        fail(f"hydra.launcher.gpus_per_node={requested}: no GPU is visible on this machine (CUDA_VISIBLE_DEVICES / "
             f"nvidia-smi); use gpus_per_node=0 with device=cpu")
    if requested > len(visible):
        fail(f"hydra.launcher.gpus_per_node={requested}: only {len(visible)} GPU(s) visible "
             f"({','.join(visible)})")
    return requested


def job_slots(visible: Sequence[str], per_job: int, parallelism: Optional[int],
              cpus_per_task: Optional[int] = None, cpu_count: Optional[int] = None) -> List[tuple[str, ...]]:
    """The GPU set of each job that may run at once: disjoint sets of ``per_job`` visible GPUs (no GPU: empty
    sets, one per ``cpus_per_task`` CPUs), at most ``parallelism`` of them."""
    if parallelism is not None and (isinstance(parallelism, bool) or not isinstance(parallelism, int)
                                    or parallelism < 1):
        fail(f"hydra.launcher.array_parallelism={parallelism!r}: must be null or an integer >= 1")
    if per_job > 0:
        slots = [tuple(visible[i:i + per_job]) for i in range(0, len(visible) - per_job + 1, per_job)]
    else:
        cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
        slots = [()] * max(1, cpus // max(1, cpus_per_task or 1))
    return slots[:parallelism] if parallelism else slots


def join_tasks() -> bool:
    """In a job of several tasks (``hydra.launcher.tasks_per_node=N``): the tasks are the ranks of one
    data-parallel job (submitit's ``TorchDistributedEnvironment`` exports ``RANK``, ``WORLD_SIZE``, ...;
    the tasks' GPUs stay as Slurm binds them). False for a job of one task."""
    import submitit

    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job
        return False
    if tasks <= 1:
        return False
    from tor_exp import distributed

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return distributed.init_from_env()


def check_gpus_usable(job_num: int, device: str) -> None:
    """In the job: a job that was given GPUs and may use them must see them (else it would run on the CPU)."""
    from tor_exp.errors import ConfigError

    given = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    print(f"[tor_exp] job #{job_num}: CUDA_VISIBLE_DEVICES={given!r}, device={device}", flush=True)
    if not given or device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"job #{job_num} was given GPU(s) CUDA_VISIBLE_DEVICES={given} but torch "
                          f"{torch.__version__} sees no CUDA device, so it would run on the CPU: install a CUDA "
                          f"build of torch, or use hydra.launcher.gpus_per_node=0 with device=cpu")


# ----------------------------------------------------------------------------------------------- Slurm refusals
def submit_or_fail(submit: Callable[[], Any], params: Dict[str, Any]) -> Any:
    """Run a submission; sbatch's refusal becomes one line naming the launcher key to change (exit 2)."""
    from submitit.core.utils import FailedJobError

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # submitit echoes sbatch's stderr before raising
            return submit()
    except FailedJobError as err:
        fail(refusal_message(str(err) or captured.getvalue(), params, slurm_partitions()))


def slurm_partitions() -> List[str]:
    """The partitions ``sinfo`` lists (none when it cannot tell)."""
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})


GPU_KEYS = ("gres", "gpus_per_task", "gpus_per_node")
# sbatch's words → the launcher keys that decide them and what to say; the first match wins. A partition that
# does not exist comes before all of them (sbatch reports a GPU request it cannot place before the partition).
REFUSALS: List[tuple[str, Sequence[str], str]] = [
    ("invalid partition", ("partition",), "Slurm has no such partition{known}"),
    ("generic resource", GPU_KEYS, "Slurm refused the GPU request (invalid generic resource): {partition} has no "
                                   "such GPUs; choose a GPU partition (hydra.launcher.partition) or run on CPUs with "
                                   "hydra.launcher.gpus_per_node=0"),
    ("invalid account", ("account",), "Slurm refused the account (unknown, or not allowed on {partition}); "
                                      "`sacctmgr show associations user=$USER` lists yours"),
    ("invalid qos", ("qos",), "Slurm refused the QOS (unknown, or not allowed for this account/partition)"),
    ("time limit", ("timeout_min",), "more than {partition} allows (`sinfo -o '%P %l'` shows its limit)"),
    ("memory specification", ("mem_gb",), "no node of {partition} has that much memory (`sinfo -N -o '%N %m'`)"),
    ("node configuration is not available", ("cpus_per_task", "mem_gb", "gpus_per_node"),
     "no node of {partition} has that many (`sinfo -N -o '%N %c %m %G'`)"),
]
# pending reasons that waiting never resolves → the launcher keys that decide them
NEVER_STARTS: Dict[str, Sequence[str]] = {
    "PartitionConfig": ("cpus_per_task", "mem_gb", "gpus_per_node"),
    "PartitionNodeLimit": ("nodes",),
    "PartitionTimeLimit": ("timeout_min",),
    "QOSMaxWallDurationPerJobLimit": ("timeout_min",),
    "BadConstraints": ("constraint",),
    "InvalidAccount": ("account",),
    "InvalidQOS": ("qos",),
}


def _named(keys: Sequence[str], params: Dict[str, Any]) -> str:
    """``hydra.launcher.a=1, b=2`` for the keys; of the GPU keys, those set (else gpus_per_node)."""
    if keys == GPU_KEYS:
        keys = [k for k in GPU_KEYS if params.get(k)] or ["gpus_per_node"]
    return "hydra.launcher." + ", ".join(f"{k}={params.get(k)}" for k in keys)


def _partition(params: Dict[str, Any]) -> str:
    return f"partition {params['partition']}" if params.get("partition") else "the default partition"


def refusal_message(sbatch_error: str, params: Dict[str, Any], partitions: Sequence[str] = ()) -> str:
    """sbatch's error text → one line naming the ``hydra.launcher`` key that decides it. ``partitions``: those
    the cluster has (sinfo), to name a partition that does not exist whatever sbatch complained of first."""
    said = "; ".join(line.strip().replace("sbatch: error: ", "") for line in sbatch_error.splitlines()
                     if line.strip()) or "no message"
    wanted = [p for p in str(params.get("partition") or "").split(",") if p]
    unknown_partition = bool(partitions) and any(p not in partitions for p in wanted)
    known = f" (partitions here: {', '.join(partitions)})" if partitions else ""
    for words, keys, message in REFUSALS:
        if (unknown_partition and keys == ("partition",)) or words in said.lower():
            return f"{_named(keys, params)}: {message.format(partition=_partition(params), known=known)}"
    return f"Slurm refused the job array: {said} (check hydra.launcher.*: conf/launcher/slurm.yaml, conf/local/)"


def never_starts(array: str) -> Optional[str]:
    """The first pending reason of the array's jobs that waiting will not fix (squeue), else None."""
    try:
        out = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={array}", "--states=PENDING",
                              "--format=%r"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return next((r.strip() for r in out.stdout.splitlines() if r.strip() in NEVER_STARTS), None)


def never_starts_message(reason: str, params: Dict[str, Any]) -> str:
    return (f"{_named(NEVER_STARTS[reason], params)}: Slurm accepted the jobs but will never start them (pending: "
            f"{reason}: more than {_partition(params)} allows; `sinfo -N -o '%N %c %m %G %l'` shows its nodes "
            f"and limit)")


def wait_or_cancel(array: str, handles: Sequence[Any], params: Dict[str, Any]) -> None:
    """Wait until every job of the array has ended (submitit's job states); jobs Slurm accepted but will never
    start (pending for a reason waiting does not fix, e.g. more CPUs than any node has) are cancelled and the
    keys named, like a refusal. The check runs after 2 s, then ever less often (at most every minute)."""
    delay, next_check = 2.0, time.time() + 2.0
    while not all(handle.done() for handle in handles):
        if time.time() >= next_check:
            reason = never_starts(array)
            if reason is not None:
                subprocess.run(["scancel", array], capture_output=True, timeout=60)
                fail(f"{never_starts_message(reason, params)}; cancelled job array {array}")
            delay = min(2 * delay, 60.0)
            next_check = time.time() + delay
        time.sleep(1.0)
