"""launcher=slurm against a real Slurm: the single-node cluster of ``launchers/local_slurm.sh`` (CI starts it).

Skipped, with the reason, only where that cluster cannot be started (not root, Slurm not installed, another
cluster's slurm.conf); ``TOR_EXP_REQUIRE_SLURM=1`` (.ci/run) turns the skip into a failure. Counts of submitted
jobs come from the scheduler (``squeue --states=all``: the test cluster keeps finished jobs for an hour), each
sweep with its own job name.

One table-like sweep of the tiny model (cells [none], [utrc,f20], [evit,f20]) carries (a), (b) and (c):
1. the [evit,f20] job runs first, in this process (Hydra's basic launcher: the sweep is now half-finished, and
   its one result was not written through Slurm);
2. the sweep through Slurm submits only #0 and #1. The first attempt of both stalls (``stall.StallFirstAttempt``,
   a Hydra callback: a legitimately slow job is slow on every attempt, so nothing would ever finish); #0 is
   preempted (``scontrol requeue``), #1 gets submitit's time-limit signal (what Slurm sends ``signal_delay_s``
   before ``timeout_min``; the real 1-minute limit is the slow test below). Both are requeued, end complete, once;
3. the same command again submits nothing.

The test cluster has no accounting database, so its ``sacct`` fails; submitit's job watcher asks sacct whether a
job ended, so the tests put ``launchers/local_slurm_bin`` (a sacct answering that one query from squeue) first on
PATH, here and for the sweeps they start.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tor_exp.records.results import config_hash

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LOCAL_SLURM = ROOT / "launchers" / "local_slurm.sh"
SACCT_FROM_SQUEUE = ROOT / "launchers" / "local_slurm_bin"
CLUSTER = "tor_exp_local"
# `~local`: this machine's conf/local/default.yaml (a real cluster's partition, ...) stays out of the tests
SLURM_ARGS = ["launcher=slurm", "~local", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
              "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=5", "hydra.launcher.signal_delay_s=5"]
CELLS = {"[none]": ("none", None), "[utrc,f20]": ("utrc", 0.2), "[evit,f20]": ("evit", 0.2)}


def cluster_problem() -> str | None:
    """Why the test cluster cannot be used now (None: it answers and its node takes jobs)."""
    if shutil.which("sinfo") is None:
        return "Slurm is not installed (sudo launchers/local_slurm.sh start installs and starts a test cluster)"
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    if config.returncode != 0:
        return "no Slurm controller answers (sudo launchers/local_slurm.sh start)"
    name = re.search(r"^ClusterName\s*=\s*(\S+)", config.stdout, re.M)
    if name is None or name.group(1) != CLUSTER:
        return (f"this machine's Slurm cluster is {name.group(1) if name else '?'}, not {CLUSTER}: the tests submit "
                f"only to the single-node cluster of launchers/local_slurm.sh")
    state = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True,
                           timeout=60).stdout.split()
    if not state or state[0] not in ("idle", "mixed", "allocated", "completing", "planned"):  # up (shared: busy)
        return f"the test cluster's node is {state[0] if state else 'missing'}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    problem = cluster_problem()
    if problem and problem.startswith("no Slurm controller") and os.geteuid() == 0:
        started = subprocess.run(["bash", str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=300)
        problem = cluster_problem() if started.returncode == 0 else f"{problem}; start-up: {started.stderr.strip()}"
    if problem:
        if os.environ.get("TOR_EXP_REQUIRE_SLURM") == "1":
            pytest.fail(f"Slurm tests required (TOR_EXP_REQUIRE_SLURM=1): {problem}")
        pytest.skip(problem)
    with pytest.MonkeyPatch.context() as mp:  # submitit's watcher in this process (in-process tests)
        mp.setenv("PATH", f"{SACCT_FROM_SQUEUE}{os.pathsep}{os.environ['PATH']}")
        yield


def env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PATH": f"{SACCT_FROM_SQUEUE}{os.pathsep}{os.environ['PATH']}"}


def sweep_cmd(name: str, cells: list[str], *extra: str, slurm_args: list[str] = SLURM_ARGS) -> list[str]:
    return [sys.executable, "-m", "tor_exp", "-m", "experiment=smoke", "eval.limit=2", "hydra.sweep.dir=multirun/table",
            f"+experiment/cell={','.join(cells)}", *slurm_args, f"hydra.launcher.name={name}", *extra]


def scheduler_jobs(name: str) -> dict[str, str]:
    """Every job (array task) Slurm has seen under this name → its state."""
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", f"--name={name}", "--format=%i %T"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def settled_jobs(name: str) -> dict[str, str]:
    """scheduler_jobs once every job has left the running states (a job's result is on disk just before its
    process exits, so the sweep may return while Slurm still shows it RUNNING or COMPLETING)."""
    active = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED"}
    wait_for(lambda: not active & set(scheduler_jobs(name).values()), 60, f"the jobs named {name} to end")
    return scheduler_jobs(name)


def restarts(job_id: str) -> int:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60).stdout
    return int(re.search(r"Restarts=(\d+)", out).group(1))


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@dataclass
class TableSweep:
    sweep: Path
    markers: Path
    name: str
    slurm: subprocess.CompletedProcess  # the sweep through Slurm (2 of 3 jobs missing)
    again: subprocess.CompletedProcess  # the same command once finished
    jobs_after: list[dict[str, str]]  # the scheduler's view after each of them
    interrupted: dict[str, str]  # "preempted" / "timed out" → Slurm job id
    in_process: tuple[int, str]  # the [evit,f20] result written before the Slurm sweep
    results_after_slurm: dict[str, tuple[int, str]]


def results(sweep: Path) -> dict[str, tuple[int, str]]:
    return {str(p.parent.relative_to(sweep)): (p.stat().st_mtime_ns, p.read_text())
            for p in sorted(sweep.rglob("results.json"))}


def run_in_process(args: list[str]) -> None:
    from hydra.core.global_hydra import GlobalHydra

    import tor_exp.__main__ as entry

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["tor_exp", *args])
        GlobalHydra.instance().clear()
        try:
            entry.main()
        finally:
            GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def table_sweep(slurm_cluster, tmp_path_factory) -> TableSweep:
    cwd = tmp_path_factory.mktemp("slurm_table")
    sweep = cwd / "multirun" / "table"
    name = f"tor_exp_test_{uuid.uuid4().hex[:8]}"
    markers = cwd / "stalled"
    cells = list(CELLS)
    run_in_process(["-m", "experiment=smoke", "eval.limit=2", f"hydra.sweep.dir={sweep}", "+experiment/cell=[evit,f20]",
                    "~local"])
    in_process = results(sweep)["tiny_mamba2/evit/f0.2/eval.limit=2"]

    stall = ["+hydra.callbacks.stall._target_=stall.StallFirstAttempt", f"+hydra.callbacks.stall.marker_dir={markers}",
             "+hydra.callbacks.stall.jobs=[0,1]"]
    cmd = sweep_cmd(name, cells, *stall)
    with subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            wait_for(lambda: (markers / "stalled_0").exists() and (markers / "stalled_1").exists()
                     or proc.poll() is not None, 240, "both jobs to stall")
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            ids = {job_id.rsplit("_", 1)[-1]: job_id for job_id in scheduler_jobs(name)}
            interrupted = {"preempted": ids["0"], "timed out": ids["1"]}
            subprocess.run(["scontrol", "requeue", ids["0"]], check=True, timeout=60)
            # submitit's time-limit signal (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise), sent as Slurm
            # sends it signal_delay_s before timeout_min
            subprocess.run(["scancel", "--signal=USR2", ids["1"]], check=True, timeout=60)
            out, err = proc.communicate(timeout=360)
        finally:
            if proc.poll() is None:
                proc.kill()
    slurm = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    jobs = [settled_jobs(name)]
    after_slurm = results(sweep)
    again = subprocess.run(sweep_cmd(name, cells), cwd=cwd, env=env(), capture_output=True, text=True, timeout=360)
    jobs.append(settled_jobs(name))
    return TableSweep(sweep, markers, name, slurm, again, jobs, interrupted, in_process, after_slurm)


def test_table_sweep_ends_with_one_complete_result_per_job(table_sweep):
    """(a) both runs exit 0; one results.json per grid cell, complete, of its own config, nothing else."""
    for run in (table_sweep.slurm, table_sweep.again):
        assert run.returncode == 0, run.stderr[-3000:]
    found = results(table_sweep.sweep)
    assert sorted(found) == [f"tiny_mamba2/{cell}/eval.limit=2" for cell in ("evit/f0.2", "none/f0.0", "utrc/f0.2")]
    for job, (_, text) in found.items():
        res = json.loads(text)
        method = job.split("/")[1]
        assert res["status"] == "complete" and res["method"] == method and res["model"] == "tiny_mamba2"
        assert res["config_hash"] == config_hash(res["config"])
        assert res["num_requests"] == {"lambada_fixture": 2}
        assert method == "none" or res["target_flops"] == 0.2
        assert all(v is None or v == v for v in res["metrics"]["lambada_fixture"].values())  # no NaN
    assert not list(table_sweep.sweep.rglob("*.json.tmp"))
    assert set(table_sweep.jobs_after[-1].values()) == {"COMPLETED"}


def test_preempted_and_timed_out_jobs_are_requeued_and_end_complete_once(table_sweep):
    """(b) both interrupted jobs restarted once (the scheduler's count) under the same job id and wrote one
    complete result; the timed-out one was requeued by submitit, counting down max_num_timeout (3)."""
    assert sorted(p.name for p in table_sweep.markers.iterdir()) == ["stalled_0", "stalled_1"]  # 1st attempts
    for what, job_id in table_sweep.interrupted.items():
        assert restarts(job_id) == 1, what
        assert table_sweep.jobs_after[0][job_id] == "COMPLETED", what
    submitit_dir = table_sweep.sweep / ".submitit"

    def logs(job_id: str) -> str:
        return "".join(p.read_text() for p in (submitit_dir / job_id).glob("*_log.*"))

    timed_out = logs(table_sweep.interrupted["timed out"])
    assert "this job is timed-out" in timed_out and "(2 remaining timeouts)" in timed_out
    preempted = logs(table_sweep.interrupted["preempted"])
    assert "DUE TO JOB REQUEUE" in preempted and "remaining timeouts" not in preempted
    for what, job_id in table_sweep.interrupted.items():  # both attempts append to the same job log
        text = logs(job_id)
        assert text.count("[tor_exp] job #") == 2, what  # two attempts started
        assert text.count("[tor_exp.run][INFO] - results:") == 1 and "skipped (resume=true)" not in text, what


def test_reruns_submit_only_the_missing_jobs(table_sweep):
    """(c) the half-finished sweep submitted exactly its two missing jobs, #0 and #1 (the scheduler saw two, no
    third; the result written beforehand is untouched); the finished sweep, run again, submits none and leaves
    every results.json as it was."""
    out = table_sweep.slurm.stdout + table_sweep.slurm.stderr
    assert "3 job(s), 1 already complete (resume=true, not submitted), 2 to run" in out and "(#0, #1)" in out
    assert len(table_sweep.jobs_after[0]) == 2  # requeues are no new submissions either
    assert table_sweep.results_after_slurm["tiny_mamba2/evit/f0.2/eval.limit=2"] == table_sweep.in_process
    assert table_sweep.jobs_after[1] == table_sweep.jobs_after[0]
    again = table_sweep.again.stdout + table_sweep.again.stderr
    assert "3 job(s), 3 already complete (resume=true, not submitted), 0 to run" in again
    assert results(table_sweep.sweep) == table_sweep.results_after_slurm


# ----------------------------------------------------------------------------------------------- refusals
def test_a_bad_partition_is_one_line_naming_it_before_the_gpu_request(slurm_cluster, tmp_path):
    """`launcher=slurm hydra.launcher.partition=nope` with the default GPU request (gpus_per_node=1): sbatch
    complains of the GPUs, not of the partition that does not exist; the one line names the partition (the key to
    change first), and nothing is queued."""
    name = f"tor_exp_test_{uuid.uuid4().hex[:8]}"
    default_gpus = [a for a in SLURM_ARGS if not a.startswith("hydra.launcher.gpus_per_node=")]
    run = subprocess.run(sweep_cmd(name, ["[none]"], "hydra.launcher.partition=nope", slurm_args=default_gpus),
                         cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr == "error: hydra.launcher.partition=nope: Slurm has no such partition (partitions here: " \
                         "debug)\n"
    assert scheduler_jobs(name) == {}


def _launcher(tmp_path, **params):
    from hydra_plugins.tor_exp_launcher.launchers import SlurmLauncher

    base = {"submitit_folder": str(tmp_path / "%j"), "timeout_min": 5, "cpus_per_task": 1, "gpus_per_node": 0,
            "mem_gb": 1, "partition": None, "account": None, "qos": None, "max_num_timeout": 3,
            "name": f"tor_exp_test_{uuid.uuid4().hex[:8]}"}
    return SlurmLauncher(**{**base, **params})


@pytest.mark.parametrize("key,value,said", [
    ("partition", "nope", "Slurm has no such partition (partitions here: debug)"),
    ("gpus_per_node", 1, "Slurm refused the GPU request (invalid generic resource)"),
    ("account", "blocked", "Slurm refused the account"),
    ("qos", "gold", "Slurm refused the QOS"),
])
def test_scheduler_refusals_are_one_line_naming_the_key(slurm_cluster, tmp_path, capsys, key, value, said):
    """The same submission path as a sweep (submitit's sbatch call), against the real slurmctld."""
    from tor_exp.launcher import submit_or_fail

    launcher = _launcher(tmp_path, **{key: value})
    executor = launcher.executor()
    with pytest.raises(SystemExit) as exc:
        submit_or_fail(lambda: executor.submit(print, "never runs"), launcher.params)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: hydra.launcher.{key}={value}: {said}")
    assert scheduler_jobs(launcher.params["name"]) == {}


def test_jobs_slurm_would_never_start_are_cancelled_and_named(slurm_cluster, tmp_path, capsys):
    """More CPUs than the node has: sbatch accepts, the job would pend forever (PartitionConfig)."""
    from tor_exp.launcher import wait_or_cancel

    launcher = _launcher(tmp_path, cpus_per_task=64)
    handle = launcher.executor().submit(print, "never runs")
    array = str(handle.job_id)
    with pytest.raises(SystemExit) as exc:
        wait_or_cancel(array, [handle], launcher.params)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: hydra.launcher.cpus_per_task=64, mem_gb=1, gpus_per_node=0: Slurm accepted the "
                          "jobs but will never start them (pending: PartitionConfig")
    wait_for(lambda: scheduler_jobs(launcher.params["name"]).get(array) == "CANCELLED", 30, "the cancellation")


def test_jobs_that_fail_or_die_without_a_result_are_one_line_each(slurm_cluster, tmp_path, capsys):
    """Two real Slurm jobs: one raises, one is cancelled while it runs (it never writes a result: only the
    scheduler can tell it ended, through sacct); both end the sweep with a line each, exit code 1."""
    import threading

    from tor_exp.launcher import PlannedJob, results_or_exit

    launcher = _launcher(tmp_path)
    executor = launcher.executor()
    handles = [executor.submit(int, "boom"), executor.submit(time.sleep, 600)]
    wait_for(lambda: scheduler_jobs(launcher.params["name"]).get(str(handles[1].job_id)) == "RUNNING", 120,
             "the sleeping job to start")
    subprocess.run(["scancel", str(handles[1].job_id)], check=True, timeout=60)
    jobs = [PlannedJob(num=n, overrides=[f"seed={n}"], device="cpu", out_dir=None, complete=False) for n in (0, 1)]
    ended: list[BaseException] = []
    waiter = threading.Thread(target=lambda: ended.append(pytest.raises(SystemExit, results_or_exit, jobs, handles,
                                                                        launcher.params).value), daemon=True)
    waiter.start()
    waiter.join(timeout=180)
    assert ended, "still waiting 180 s after the job was cancelled: its end was never seen (sacct)"
    assert ended[0].code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0] == (f"error: job #0 (seed=0) failed: ValueError: invalid literal for int() "
                                            f"with base 10: 'boom' (log: {handles[0].paths.stderr})")
    # the state as the cluster's sacct reports it (a real sacct says "CANCELLED by <uid>")
    assert re.fullmatch(r"error: job #1 \(seed=1\) failed: UncompletedJobError: the job has not produced any output "
                        r"\(state: CANCELLED( by \d+)?\) \(log: " + re.escape(str(handles[1].paths.stderr)) + r"\)",
                        lines[1]), lines[1]


# ----------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_a_job_over_its_real_time_limit_is_requeued_and_ends_complete(slurm_cluster, tmp_path):
    """timeout_min=1: Slurm itself signals the stalled first attempt before the limit (about 80 s in all)."""
    name = f"tor_exp_test_{uuid.uuid4().hex[:8]}"
    cmd = sweep_cmd(name, ["[utrc,f20]"], "hydra.launcher.timeout_min=1", "hydra.launcher.max_num_timeout=1",
                    "+hydra.callbacks.stall._target_=stall.StallFirstAttempt",
                    f"+hydra.callbacks.stall.marker_dir={tmp_path / 'stalled'}", "+hydra.callbacks.stall.jobs=[0]")
    run = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    (job_id, state), = settled_jobs(name).items()
    assert state == "COMPLETED" and restarts(job_id) == 1
    log = "".join(p.read_text() for p in (tmp_path / "multirun" / "table" / ".submitit").rglob("*_log.*"))
    assert "this job is timed-out" in log and "(0 remaining timeouts)" in log
    job_dir = tmp_path / "multirun" / "table" / "tiny_mamba2" / "utrc" / "f0.2" / "eval.limit=2"
    res = json.loads((job_dir / "results.json").read_text())
    assert res["status"] == "complete"


@pytest.mark.slow
def test_a_job_always_over_its_time_limit_ends_failed_after_max_num_timeout(slurm_cluster, tmp_path):
    """Requeueing cannot save a job that is slow on every attempt (nothing is checkpointed): a tiny benchmark
    with an absurd repeat count (bench.repeats) is requeued max_num_timeout=1 time, then the sweep fails with
    one line naming timeout_min (about 100 s)."""
    name = f"tor_exp_test_{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "tor_exp", "-m", "model=tiny_mamba2", "task=bench", "bench.repeats=1000000",
           "bench.plot=false", "hydra.sweep.dir=multirun/slow", "reduction=none", "device=cpu", *SLURM_ARGS,
           f"hydra.launcher.name={name}", "hydra.launcher.timeout_min=1", "hydra.launcher.max_num_timeout=1"]
    run = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "timed-out too many times" in lines[0]
    assert "hydra.launcher.timeout_min=1" in lines[0] and "max_num_timeout=1" in lines[0]
    (job_id, _), = scheduler_jobs(name).items()
    assert restarts(job_id) == 1
