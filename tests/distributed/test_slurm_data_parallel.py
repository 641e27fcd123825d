"""A Slurm job of two tasks (``hydra.launcher.tasks_per_node=2``) is one data-parallel job: rank 0's record holds
the numbers of one process, and a preempted (requeued) attempt still ends complete, once.

Runs on the single-node cluster of ``launchers/local_slurm.sh`` (skipped, with the reason, where it is not up; see
tests/sweeps/test_slurm.py, whose readiness check this uses)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_tor_exp_slurm_tests", ROOT / "tests" / "sweeps" / "test_slurm.py")
slurm_tests = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = slurm_tests  # its dataclasses look their module up
_spec.loader.exec_module(slurm_tests)  # type: ignore[union-attr]

JOB = ["model=reference", "reduction=utrc", "eval.limit=24", "eval.compare_baseline=false", "eval.bootstrap_iters=0"]


@pytest.mark.slow
def test_two_tasks_per_node_equal_one_process_and_survive_a_requeue(tmp_path: Path) -> None:
    problem = slurm_tests.cluster_problem()
    if problem:
        pytest.skip(problem)
    env = {**slurm_tests.env(), "WANDB_MODE": "disabled"}
    one = subprocess.run([sys.executable, "-m", "tor_exp", *JOB, f"hydra.run.dir={tmp_path / 'one'}"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    name = f"tor_exp_dp_{uuid.uuid4().hex[:8]}"
    sweep = subprocess.Popen([sys.executable, "-m", "tor_exp", "-m", *JOB, *slurm_tests.SLURM_ARGS,
                              "hydra.launcher.tasks_per_node=2", f"hydra.launcher.name={name}",
                              f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        slurm_tests.wait_for(lambda: "RUNNING" in slurm_tests.scheduler_jobs(name).values(), 120, "the job to run")
        job = next(iter(slurm_tests.scheduler_jobs(name)))
        time.sleep(8)  # both ranks are in the run
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
        _, stderr = sweep.communicate(timeout=400)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    assert slurm_tests.restarts(job) == 1
    records = list((tmp_path / "sweep").rglob("results.json"))
    assert len(records) == 1
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads(records[0].read_text())
    assert abs(a["metrics"]["reference_heldout"]["bits_per_byte"]
               - b["metrics"]["reference_heldout"]["bits_per_byte"]) <= 1e-6
    assert a["metrics"]["reference_heldout_mc"]["acc"] == b["metrics"]["reference_heldout_mc"]["acc"]
    assert a["tokens_per_task"] == b["tokens_per_task"] and a["num_requests"] == b["num_requests"]
    assert abs(a["realised_flops_reduction"] - b["realised_flops_reduction"]) <= 1e-12
    assert len(list((tmp_path / "sweep" / ".submitit").rglob("*_1_log.out"))) == 1  # a rank 1 ran


@pytest.mark.slow
def test_a_failing_rank_ends_both_tasks_with_its_line(tmp_path: Path) -> None:
    """Rank 0 cannot claim the job's folder (another process holds it): the sweep ends with its line, and both
    tasks of the job end with that same line and exit code 2 (rank 1 reads it before rank 0's store goes)."""
    problem = slurm_tests.cluster_problem()
    if problem:
        pytest.skip(problem)
    env = {**slurm_tests.env(), "WANDB_MODE": "disabled"}
    folder = tmp_path / "sweep" / ("eval.bootstrap_iters=0,eval.compare_baseline=False,eval.limit=24,"
                                   "model=reference,reduction=utrc")
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import filelock, time; "
                               f"lock = filelock.FileLock({str(folder / '.tor_exp.lock')!r}); lock.acquire(); "
                               f"open({str(folder / '.tor_exp.owner')!r}, 'w').write('pid 999 (test)'); "
                               "print('held', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        sweep = subprocess.run([sys.executable, "-m", "tor_exp", "-m", *JOB, *slurm_tests.SLURM_ARGS,
                                "hydra.launcher.tasks_per_node=2",
                                f"hydra.launcher.name=tor_exp_dpf_{uuid.uuid4().hex[:8]}",
                                f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=400)
    finally:
        holder.kill()
    said = f"output dir {folder} is in use by another run (pid 999 (test))"
    assert sweep.returncode == 1
    assert [line for line in sweep.stderr.splitlines() if line.startswith("error: ")] == [
        line for line in sweep.stderr.splitlines() if line.startswith("error: job #0") and said in line]
    logs = sorted((tmp_path / "sweep" / ".submitit").rglob("*_log.err"))
    assert len(logs) == 2
    for log in logs:  # rank 0 and rank 1: the same line
        assert [line for line in log.read_text().splitlines() if line.startswith("error: ")][0].startswith(
            f"error: {said}")
    assert "tasks 0-1: Exited with exit code 2" in logs[0].read_text() + logs[1].read_text()  # srun: both 2
