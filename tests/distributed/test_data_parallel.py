"""Data-parallel evaluation with real processes: ``torchrun --standalone --nproc_per_node 2`` (gloo, CPU).

The single-process run of the same command is the reference: two ranks must give the same metrics (|Δ| ≤ 1e-6 in
bits per byte, accuracies equal), the same realised FLOPs reduction and the same token ledger, and leave one
results.json (and one W&B run); a bad override ends every rank with the same line and exit code 2; a killed rank
ends the job with a line naming it. Every subprocess has a timeout, so a hang fails the test instead of the suite.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# small: the reference model on both of its tasks, 6 items each (MC: 24 requests, ranks get 3 items each)
JOB = ["model=reference", "reduction=utrc", "eval.limit=6", "eval.compare_baseline=false", "eval.bootstrap_iters=0"]
TIMEOUT_S = 240


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", WANDB_SILENT="true", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    return out


def run(cmd: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    """`-m tor_exp` with 2 ranks: the numbers of one process, one results.json, one W&B run, nothing else."""
    one = run([sys.executable, "-m", "tor_exp", *JOB, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([*TORCHRUN, "-m", "tor_exp", *JOB, "logger=wandb", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert a["metrics"].keys() == b["metrics"].keys() == {"reference_heldout", "reference_heldout_mc"}
    assert abs(a["metrics"]["reference_heldout"]["bits_per_byte"]
               - b["metrics"]["reference_heldout"]["bits_per_byte"]) <= 1e-6  # nats-like: log2 space
    assert a["metrics"]["reference_heldout_mc"]["acc"] == b["metrics"]["reference_heldout_mc"]["acc"]
    assert b["num_requests"] == a["num_requests"] == {"reference_heldout": 6, "reference_heldout_mc": 24}
    assert b["tokens_per_task"] == a["tokens_per_task"]  # whole numbers, summed exactly over the ranks
    assert a["tokens_per_task"]["reference_heldout_mc"]["layer_tokens_real"] < \
        a["tokens_per_task"]["reference_heldout_mc"]["layer_tokens_full"]  # the reduction ran
    for task, f in a["flops_per_task"].items():
        assert abs(b["flops_per_task"][task] - f) <= 1e-12
    assert abs(b["realised_flops_reduction"] - a["realised_flops_reduction"]) <= 1e-12
    # one record, written once: the only files are rank 0's
    files = sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*")
                   if p.is_file() and "wandb" not in p.parts)
    assert files == [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", ".tor_exp.lock",
                     "results.json", "tor_exp.log"]
    assert len(list((tmp_path / "two" / "wandb").glob("offline-run-*"))) == 1
    assert two.stdout.count("results: ") == 1  # rank 0 alone reports


def test_bad_override_one_line_exit_2_on_every_rank(tmp_path: Path) -> None:
    proc = run([*TORCHRUN, "--log-dir", str(tmp_path / "logs"), "-m", "tor_exp", "model=reference",
                "reduction.q=1.5"], tmp_path, timeout=120)
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert lines == ["error: reduction.q=1.5: must be in [0.0, 1.0]"] * 2, proc.stderr[-2000:]
    # torchrun's summary: every rank exited 2 (none was ended by the launcher's SIGTERM)
    codes = [line.split(":", 1)[1].split("(")[0].strip() for line in proc.stderr.splitlines()
             if line.strip().startswith("exitcode")]
    assert codes == ["2", "2"], proc.stderr[-2000:]


def _rank_pid(parent_pattern: str, rank: int, deadline: float) -> int:
    """The pid of the worker of ``rank`` whose command line holds ``parent_pattern``."""
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if parent_pattern in cmd and f"RANK={rank}".encode() in environ and "torch.distributed.run" not in cmd:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} process found")


@pytest.mark.slow
def test_killed_rank_ends_the_job_with_a_line_naming_it(tmp_path: Path) -> None:
    marker = f"hydra.run.dir={tmp_path / 'killed'}"
    proc = subprocess.Popen([*TORCHRUN, "-m", "tor_exp", "model=reference", "eval.limit=40", marker], cwd=tmp_path,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        pid = _rank_pid(marker, 1, deadline)
        while time.time() < deadline and not (tmp_path / "killed" / "tor_exp.log").exists():
            time.sleep(0.2)  # rank 0 holds the folder: the run has started
        time.sleep(3)
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert f"error: rank 1 of 2 (pid {pid}) ended without a word (killed?); the run ends on every rank" in \
        error_lines(stderr), stderr[-3000:]
    assert not (tmp_path / "killed" / "results.json").exists()


@pytest.mark.slow
def test_lm_eval_command_line_two_ranks_equal_one(tmp_path: Path) -> None:
    """`-m tor_exp.lm_eval --model tor_exp` with LTMP (thresholds calibrated, then rank 0's broadcast),
    `--batch_size auto` (the ranks' minimum) and one W&B run (rank 0's)."""
    args = ["-m", "tor_exp.lm_eval", "--model", "tor_exp", "--model_args",
            "model=reference,reduction=ltmp,reduction.target_flops=0.3", "--tasks",
            "reference_heldout,reference_heldout_mc", "--limit", "6", "--batch_size", "auto"]
    one = run([sys.executable, *args, "--output_path", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([*TORCHRUN, *args, "--output_path", str(tmp_path / "two"), "--wandb_args",
               "project=tor_exp_dp,mode=offline"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    ra, rb = (list((tmp_path / n).rglob("results_*.json")) for n in ("one", "two"))
    assert len(ra) == len(rb) == 1
    a, b = (json.loads(r[0].read_text())["results"] for r in (ra, rb))
    assert abs(a["reference_heldout"]["bits_per_byte,none"] - b["reference_heldout"]["bits_per_byte,none"]) <= 1e-6
    assert a["reference_heldout_mc"]["acc,none"] == b["reference_heldout_mc"]["acc,none"]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1  # rank 0's run only


@pytest.mark.slow
def test_an_error_on_one_rank_ends_every_rank_with_its_line(tmp_path: Path) -> None:
    """Rank 0 alone claims the folder; another process holds it, so rank 0 fails: rank 1 (loading its replica)
    ends with rank 0's line and exit code."""
    busy = tmp_path / "busy"
    busy.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import filelock, sys, time; "
                               f"lock = filelock.FileLock({str(busy / '.tor_exp.lock')!r}); lock.acquire(); "
                               f"open({str(busy / '.tor_exp.owner')!r}, 'w').write('pid 999 (test)'); "
                               "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run([*TORCHRUN, "-m", "tor_exp", "model=reference", "eval.limit=6", f"hydra.run.dir={busy}"],
                   tmp_path, timeout=180)
    finally:
        holder.kill()
    line = (f"error: output dir {busy} is in use by another run (pid 999 (test)); wait for it to end or choose "
            "another hydra.run.dir / hydra.sweep.dir")
    assert error_lines(proc.stderr) == [line, line], proc.stderr[-2000:]
    codes = [ln.split(":", 1)[1].split("(")[0].strip() for ln in proc.stderr.splitlines()
             if ln.strip().startswith("exitcode")]
    assert codes == ["2", "2"], proc.stderr[-2000:]
