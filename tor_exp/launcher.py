"""Sweep launchers: hydra-submitit-launcher's Slurm and local launchers, plus what tor_exp's sweeps need.

* Nothing finished is submitted again. Before submitting, every job's config is composed exactly as the job will
  compose it (its own output dir from ``hydra.sweep.dir``/``hydra.sweep.subdir``, whatever the layout, and its
  resolved config); a job whose results.json is complete for that config is left out, by the very test the job's
  own resume check uses (:func:`tor_exp.records.results.is_complete`). A finished sweep submits no job; a
  half-finished one submits only the missing jobs, keeping their job numbers (``hydra.job.num``). Every job is
  also validated before anything is queued.
* Slurm: a job that reaches its time limit is requeued up to ``max_num_timeout`` times (default 3: jobs are
  idempotent, so a requeued job simply starts again; one that is always too slow still ends failed), a
  preempted one without limit (submitit). A refusal by sbatch (partition, GPUs/gres, account, QOS, time, memory)
  ends in one line naming the ``hydra.launcher`` key to change, exit code 2.
* Local: each job gets its own GPU(s) through ``CUDA_VISIBLE_DEVICES``; jobs wait for a free GPU set (one job
  per GPU by default, ``array_parallelism=1``: one at a time), never all on GPU 0, never silently on the CPU.
* A failed job ends the sweep with one line per failed job (its log path) and exit code 1, not a traceback.

Hydra instantiates launchers only from the ``hydra_plugins`` namespace package, so the classes Hydra sees are
thin subclasses in ``hydra_plugins/tor_exp_launcher/launchers.py``; that module also stores the schemas in
Hydra's ConfigStore as ``hydra/launcher: tor_exp_slurm | tor_exp_local`` when Hydra scans its plugins, the way
hydra-submitit-launcher stores ``submitit_slurm | submitit_local``. ``conf/launcher/{slurm,local}.yaml`` select
them.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from submitit.slurm.slurm import SlurmInfoWatcher

import tor_exp.config  # noqa: F401  (job folder resolvers, before a job process resolves its folder)
from tor_exp.errors import ConfigError, fail

log = logging.getLogger(__name__)

JOB_FAILED_EXIT = 1  # a job failed (bad user input exits with 2)
# stands in for the scheduler's job id while jobs are planned: a sweep dir that contains it cannot be known
# before submission, so such jobs are always submitted (they still skip themselves when complete)
_JOB_ID_PLACEHOLDER = "tor_exp-job-id-unknown-before-submission"


# ----------------------------------------------------------------------------------------------- schemas
@dataclass
class SlurmConf(SlurmQueueConf):
    """hydra-submitit-launcher's Slurm schema; timed-out jobs are requeued (they are idempotent)."""

    _target_: str = "hydra_plugins.tor_exp_launcher.launchers.SlurmLauncher"
    max_num_timeout: int = 3


@dataclass
class LocalConf(LocalQueueConf):
    """hydra-submitit-launcher's local schema with a GPU per job.

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
    """One job of a sweep as it will run: its number, overrides, composed config and output dir."""

    num: int
    overrides: List[str]
    config: DictConfig  # the job's config including its hydra node (runtime.output_dir set)
    task_config: DictConfig  # what the task function receives (hydra node removed)
    out_dir: Optional[Path]  # None: depends on the scheduler's job id
    resolved: Optional[Dict[str, Any]]  # None: depends on the scheduler's job id
    complete: bool = False

    @property
    def label(self) -> str:
        return f"#{self.num} ({' '.join(filter_overrides(self.overrides)) or 'no overrides'})"


def plan_job(config_loader: Any, master_config: DictConfig, overrides: Sequence[str], num: int,
             check: Optional[Callable[[DictConfig], None]] = None) -> PlannedJob:
    """Compose job ``num`` as Hydra's ``run_job`` will in the job: same config, same output dir, same resolution.

    ``check(task_config)`` runs while the job's Hydra config is active (interpolations into ``hydra`` resolve).
    """
    from tor_exp.records.results import is_complete

    cfg = config_loader.load_sweep_config(master_config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.id = _JOB_ID_PLACEHOLDER
        cfg.hydra.job.num = num
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    try:
        hydra_config.set_config(cfg)
        out = os.path.abspath(os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                           str(OmegaConf.select(cfg, "hydra.sweep.subdir"))))
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = out
        hydra_config.set_config(cfg)
        task = copy.deepcopy(cfg)
        with read_write(task), open_dict(task):
            del task["hydra"]
        resolved: Dict[str, Any] = OmegaConf.to_container(task, resolve=True)  # type: ignore[assignment]
        if check is not None:
            check(task)
    finally:
        hydra_config.cfg = saved
    job = PlannedJob(num=num, overrides=list(overrides), config=cfg, task_config=task,
                     out_dir=None if _JOB_ID_PLACEHOLDER in out else Path(out),
                     resolved=None if _JOB_ID_PLACEHOLDER in repr(resolved) else resolved)
    job.complete = (job.out_dir is not None and job.resolved is not None and bool(job.resolved.get("resume", True))
                    and is_complete(job.out_dir, job.resolved))
    return job


def _validate(task_config: DictConfig) -> None:
    from tor_exp.config import register_configs, validate

    register_configs()
    validate(task_config)


# ----------------------------------------------------------------------------------------------- launchers
class _TorExpLauncher(BaseSubmititLauncher):
    """Shared by both launchers: plan, leave out complete jobs, run the rest, report failures in one line each."""

    _OWN_KEYS: frozenset[str] = frozenset()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        planned: List[PlannedJob] = []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            try:
                planned.append(plan_job(self.hydra_context.config_loader, self.config, overrides, num, _validate))
            except ConfigError as err:
                fail(f"job #{num} ({' '.join(filter_overrides(overrides))}): {err}")
        done = [job for job in planned if job.complete]
        pending = [job for job in planned if not job.complete]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"[tor_exp] {self._EXECUTOR} sweep in {sweep_dir}: {len(planned)} job(s), {len(done)} already "
                 f"complete (resume=true, not submitted), {len(pending)} to run")
        for job in done:
            log.info(f"\t{job.label}: complete in {job.out_dir}")
        returns = {job.num: _completed_return(job) for job in done}
        if pending:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            for job in pending:
                log.info(f"\t{job.label}")
            returns.update(self._run(pending))
        return [returns[job.num] for job in planned]

    def _run(self, pending: List[PlannedJob]) -> Dict[int, JobReturn]:
        raise NotImplementedError

    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> JobReturn:
        """Runs in the job (submitit): the plugin's job body, after a check that GPUs given are GPUs used."""
        import submitit

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra.job) as job:
            job.id = submitit.JobEnvironment().job_id  # type: ignore[attr-defined]
            job.num = job_num
        check_gpus_usable(job_num, str(sweep_config.get("device", "auto")))
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                       job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")

    def _executor(self) -> Any:
        """A submitit executor from the launcher keys, as the plugin builds it (minus tor_exp's own keys)."""
        import submitit

        params = {k: v for k, v in self.params.items() if k not in self._OWN_KEYS}
        init: Dict[str, Any] = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        return executor

    @staticmethod
    def _job_args(job: PlannedJob) -> tuple:
        return (job.overrides, "hydra.sweep.dir", job.num, f"job_id_for_{job.num}", Singleton.get_state())

    def _collect(self, submitted: List[tuple[PlannedJob, Any]]) -> Dict[int, JobReturn]:
        """Wait for every job; a failed one is reported as one line (with its log) after all have ended."""
        returns: Dict[int, JobReturn] = {}
        failures: List[str] = []
        for job, handle in submitted:
            try:
                ret = handle.results()[0]
            except Exception as err:  # submitit: the job raised outside the task, or died without a result
                reason = _reason(str(err))
            else:
                if ret.status != JobStatus.FAILED:
                    returns[job.num] = ret
                    continue
                exc = ret._return_value  # the task raised (Hydra's run_job caught it; also submitit's time-out)
                reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            if "timed-out too many times" in reason:
                reason += (f" (every attempt reached hydra.launcher.timeout_min={self.params.get('timeout_min')}; "
                           f"requeued max_num_timeout={self.params.get('max_num_timeout')} times)")
            failures.append(f"job {job.label} failed: {reason} (log: {handle.paths.stderr})")
        if failures:
            for line in failures:
                sys.stderr.write(f"error: {line}\n")
            raise SystemExit(JOB_FAILED_EXIT)
        return returns


class SlurmLauncher(_TorExpLauncher):
    """One job array of the jobs still to run; sbatch refusals as one line naming the key."""

    _EXECUTOR = "slurm"

    def _run(self, pending: List[PlannedJob]) -> Dict[int, JobReturn]:
        if shutil.which("sbatch") is None:
            fail("launcher=slurm: sbatch not found: this machine is not a Slurm submit node "
                 "(launchers/local_slurm.sh starts a single-node cluster to try it)")
        executor = self._executor()
        handles = submit_or_fail(lambda: executor.map_array(self, *zip(*[self._job_args(j) for j in pending])),
                                 self.params)
        array = str(handles[0].job_id).split("_")[0]
        log.info(f"[tor_exp] submitted Slurm job array {array}: {len(handles)} job(s) "
                 f"({', '.join('#' + str(j.num) for j in pending)}); logs in {self.params['submitit_folder']}")
        self._wait(array, handles)
        return self._collect(list(zip(pending, handles)))

    def _wait(self, array: str, handles: List[Any]) -> None:
        """Wait for the jobs; jobs Slurm accepted but will never start (pending for a reason that waiting does
        not fix, e.g. more CPUs than any node has) are cancelled and reported like a refusal."""
        for handle in handles:  # submitit makes array jobs its own SlurmJob: give them our state watcher
            handle.watcher = WATCHER
            WATCHER.register_job(handle.job_id)
        delay, next_check = 2.0, time.time() + 2.0
        while not all(handle.done() for handle in handles):
            if time.time() >= next_check:
                reason = never_starts(array)
                if reason is not None:
                    subprocess.run(["scancel", array], capture_output=True, timeout=60)
                    fail(f"{never_starts_message(reason, self.params)}; cancelled job array {array}")
                delay = min(2 * delay, 60.0)
                next_check = time.time() + delay
            time.sleep(1.0)


class LocalLauncher(_TorExpLauncher):
    """Jobs as local processes (submitit), each on its own GPU set, at most one job per set at a time."""

    _EXECUTOR = "local"
    _OWN_KEYS = frozenset({"gpus_per_node", "array_parallelism", "setup"})
    poll_s = 0.5

    def _run(self, pending: List[PlannedJob]) -> Dict[int, JobReturn]:
        visible = visible_gpus()
        devices = {str(job.resolved.get("device", "auto")) if job.resolved else "auto" for job in pending}
        per_job = gpus_per_job(self.params.get("gpus_per_node"), visible, devices)
        slots = job_slots(visible, per_job, self.params.get("array_parallelism"), self.params.get("cpus_per_task"))
        executor = self._executor()
        executor.update_parameters(gpus_per_node=0)  # CUDA_VISIBLE_DEVICES is set per job (setup line) below
        setup = list(self.params.get("setup") or [])
        log.info(f"[tor_exp] local: {len(slots)} job(s) at a time, GPUs per job {per_job}"
                 + (f" (visible: {','.join(visible)})" if visible else " (no GPU visible)"))
        queue, free = list(pending), list(range(len(slots)))
        running: List[tuple[PlannedJob, Any, int]] = []
        submitted: List[tuple[PlannedJob, Any]] = []
        while queue or running:
            while queue and free:
                job, slot = queue.pop(0), free.pop(0)
                gpus = ",".join(slots[slot])
                executor.update_parameters(local_setup=[*setup, f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpus)}"])
                handle = executor.submit(self, *self._job_args(job))
                log.info(f"\tstarted {job.label} with CUDA_VISIBLE_DEVICES={gpus!r}")
                running.append((job, handle, slot))
                submitted.append((job, handle))
            finished = [entry for entry in running if entry[1].done()]
            for entry in finished:
                running.remove(entry)
                free.append(entry[2])
            if not finished:
                time.sleep(self.poll_s)
        return self._collect(submitted)


class SqueueWatcher(SlurmInfoWatcher):
    """submitit's job-state watcher (sacct), reading squeue instead where the cluster keeps no accounting.

    Without slurmdbd (e.g. the test cluster of launchers/local_slurm.sh) sacct fails: submitit would log a warning
    at every poll and never see a job that ended without a result (killed, or cancelled), waiting forever. squeue
    lists jobs until MinJobAge after their end; a job it no longer lists has ended.
    """

    _sacct_works: Optional[bool] = None

    def update(self) -> None:
        if self._sacct_works is None:
            probe = subprocess.run(["sacct", "--noheader", "-X", "-j", "1"], capture_output=True, timeout=60)
            self._sacct_works = probe.returncode == 0
        if self._sacct_works:
            super().update()
            return
        unfinished = self._registered - self._finished
        if not unfinished:
            return
        self._num_calls += 1
        out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N",
                              f"--user={os.getuid()}"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            listed = self.read_info("JobID|State|NodeList\n" + out.stdout)
            for job_id in unfinished:
                self._info_dict[job_id] = listed.get(job_id, {"JobID": job_id, "State": "ENDED (no longer listed)"})
        self._last_status_check = time.time()
        for job_id in unfinished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


WATCHER = SqueueWatcher(delay_s=600)  # shared by all jobs of this process, like submitit's own


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


def check_gpus_usable(job_num: int, device: str) -> None:
    """In the job: a job that was given GPUs and may use them must see them (else it would run on the CPU)."""
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
        fail(refusal_message(str(err) or captured.getvalue(), params))


def _partitions() -> str:
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    names = sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})
    return f" (partitions here: {', '.join(names)})" if names else ""


# pending reasons that waiting never resolves → the launcher keys that decide them
NEVER_STARTS = {
    "PartitionConfig": ("cpus_per_task", "mem_gb", "gpus_per_node"),
    "PartitionNodeLimit": ("nodes",),
    "PartitionTimeLimit": ("timeout_min",),
    "QOSMaxWallDurationPerJobLimit": ("timeout_min",),
    "BadConstraints": ("constraint",),
    "InvalidAccount": ("account",),
    "InvalidQOS": ("qos",),
}


def never_starts(array: str) -> Optional[str]:
    """The first pending reason of the array's jobs that waiting will not fix (squeue), else None."""
    try:
        out = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={array}", "--states=PENDING",
                              "--format=%r"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return next((r.strip() for r in out.stdout.splitlines() if r.strip() in NEVER_STARTS), None)


def never_starts_message(reason: str, params: Dict[str, Any]) -> str:
    keys = NEVER_STARTS[reason]
    named = ", ".join(f"{k}={params.get(k)}" for k in keys)
    return (f"hydra.launcher.{named}: Slurm accepted the jobs but will never start them (pending: {reason}: more "
            f"than {_partition(params)} allows; `sinfo -N -o '%N %c %m %G %l'` shows its nodes and limit)")


def _partition(params: Dict[str, Any]) -> str:
    return f"partition {params['partition']}" if params.get("partition") else "the default partition"


def refusal_message(sbatch_error: str, params: Dict[str, Any]) -> str:
    """sbatch's error text → one line naming the ``hydra.launcher`` key that decides it."""
    lines = [line.strip() for line in sbatch_error.splitlines() if line.strip()]
    said = "; ".join(line.replace("sbatch: error: ", "") for line in lines) or "no message"
    low = said.lower()
    partition = _partition(params)

    def key(name: str) -> str:
        return f"hydra.launcher.{name}={params.get(name)}"

    if "invalid partition" in low:
        return f"{key('partition')}: Slurm has no such partition{_partitions()}"
    if "generic resource" in low or "gres" in low:
        gpu_key = next((k for k in ("gres", "gpus_per_task", "gpus_per_node") if params.get(k)), "gpus_per_node")
        return (f"{key(gpu_key)}: Slurm refused the GPU request (invalid generic resource): {partition} "
                f"has no such GPUs; choose a GPU partition (hydra.launcher.partition) or run on CPUs with "
                f"hydra.launcher.gpus_per_node=0")
    if "invalid account" in low:
        return (f"{key('account')}: Slurm refused the account (unknown, or not allowed on {partition}); "
                f"`sacctmgr show associations user=$USER` lists yours")
    if "invalid qos" in low:
        return f"{key('qos')}: Slurm refused the QOS (unknown, or not allowed for this account/partition)"
    if "time limit" in low:
        return f"{key('timeout_min')}: more than {partition} allows (`sinfo -o '%P %l'` shows its limit)"
    if "memory specification" in low:
        return f"{key('mem_gb')}: no node of {partition} has that much memory (`sinfo -N -o '%N %m'`)"
    if "node configuration is not available" in low or "processors" in low:
        return (f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')}, mem_gb={params.get('mem_gb')}, "
                f"gpus_per_node={params.get('gpus_per_node')}: no node of {partition} has that many "
                f"(`sinfo -N -o '%N %c %m %G'`)")
    return f"Slurm refused the job array: {said} (check hydra.launcher.*: conf/launcher/slurm.yaml, conf/local/)"


# ----------------------------------------------------------------------------------------------- helpers
def _completed_return(job: PlannedJob) -> JobReturn:
    """What Hydra gets for a job left out because it is complete: its recorded headline, as the job would return."""
    from tor_exp.records.results import load_results

    assert job.out_dir is not None
    ret = JobReturn(overrides=list(OmegaConf.to_container(job.config.hydra.overrides.task)),  # type: ignore[arg-type]
                    cfg=job.task_config, hydra_cfg=None, working_dir=os.getcwd(),
                    task_name=str(job.config.hydra.job.name), status=JobStatus.COMPLETED)
    ret.return_value = (load_results(job.out_dir) or {}).get("headline")
    return ret


def _reason(message: str) -> str:
    """The useful line of submitit's error: the job's own ``error: ...`` line (bad input inside the job), the
    job's exception (last line of its trace), else the first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith("error: ")), None)
    if said is not None:
        return said[len("error: "):]
    if "failed during processing with trace:" in message:
        trace = message.split("failed during processing with trace:", 1)[1]
        body = [l.strip() for l in trace.splitlines() if l.strip() and not set(l.strip()) <= {"-"}]
        body = body[:next((i for i, l in enumerate(body) if l.startswith("You can check full logs")), len(body))]
        if body:
            return body[-1]
    return lines[0] if lines else "no message"
