"""A job's output folder with real processes, real signals and a real full disk: one run at a time, nothing
half-written, nothing lost, and every ending (busy folder, Ctrl-C, SIGTERM, full disk) is one line."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from entry_helpers import ENDLESS, FAST, assert_one_line_error, error_lines, run_main, start, wait_for

SINGLE = "interrupted: nothing written for this job; rerun with resume=true"


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and the holder's note, which no run may leave behind."""
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == ".tor_exp.owner")


def test_a_second_run_into_a_busy_folder_is_refused_at_once_naming_the_holder(tmp_path):
    """Run A holds the folder; run B (another config) fails at once, naming the folder and A's pid, and writes
    nothing; SIGTERM then ends A with one line and exit code 143, leaving no record and a free folder."""
    out = tmp_path / "run"
    holder = start(*ENDLESS, f"hydra.run.dir={out}", cwd=tmp_path, log=tmp_path / "holder")
    try:
        wait_for(".tor_exp.owner", out, holder)
        second = subprocess.run([sys.executable, "-m", "tor_exp", *FAST, "reduction.target_flops=0.3",
                                 f"hydra.run.dir={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert_one_line_error(second.returncode, second.stderr, str(out), f"pid {holder.pid}", "in use")
        assert not (out / "results.json").exists()
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=120) == 143
    finally:
        if holder.poll() is None:
            holder.kill()
    err = (tmp_path / "holder.err").read_text()
    assert "Traceback" not in err and error_lines(err)[-1] == SINGLE, err
    assert not (out / "results.json").exists() and not leftovers(out)


def test_two_runs_started_together_leave_one_whole_record(tmp_path):
    """The issue's case: two configs into one hydra.run.dir at the same moment. One run writes its record; the
    other is refused in one line (busy, or the record of another config) — never two exits 0 and one record."""
    out = tmp_path / "run"
    runs = {f: start(*FAST, "eval.limit=1", f"reduction.target_flops={f}", f"hydra.run.dir={out}", cwd=tmp_path,
                     log=tmp_path / f"run{f}") for f in (0.1, 0.3)}
    codes = {f: proc.wait(timeout=300) for f, proc in runs.items()}
    assert sorted(codes.values()) == [0, 2], codes
    winner, loser = sorted(codes, key=codes.get)
    assert_one_line_error(2, (tmp_path / f"run{loser}.err").read_text(), str(out))
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "complete" and record["config"]["reduction"]["target_flops"] == winner
    assert [p.name for p in out.glob("results.json*")] == ["results.json"] and not leftovers(out)


def test_ctrl_c_in_a_sweep_is_one_line_naming_the_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = start("-m", *ENDLESS[:-2], "bench.repeats=1,1000000", "bench.plot=false", f"hydra.sweep.dir={sweep}",
                 cwd=tmp_path, log=tmp_path / "sweep")
    try:
        done = wait_for("*/results.json", sweep, proc).parent
        running = wait_for("*/.tor_exp.owner", sweep, proc).parent
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "sweep.err").read_text()
    assert "Traceback" not in err
    assert error_lines(err)[-1] == (f"interrupted: 1 job(s) finished ({done}); nothing written for the job that "
                                    "was running; rerun with resume=true"), err
    assert running != done and not (running / "results.json").exists() and not leftovers(sweep)
    assert json.loads((done / "results.json").read_text())["status"] == "complete"


# ------------------------------------------------------------------------------------------------ full disk
@pytest.fixture()
def small_disk(tmp_path):
    """A real 1 MiB tmpfs (needs root); skipped, saying why, where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({(mounted.stderr or 'mount failed').strip()}): run as root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path, leave_pages: int) -> None:
    """Fill ``disk`` up to ``leave_pages`` free pages."""
    import os

    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * max(0, st.f_bavail - leave_pages) * st.f_frsize)
    assert os.statvfs(disk).f_bavail == leave_pages


@pytest.mark.parametrize("kind", ["bench", "samples"])
def test_a_full_disk_sends_every_file_to_the_fallback_and_says_where(kind, small_disk, tmp_path, monkeypatch,
                                                                     capsys):
    """One page left: the run holds its folder, then every write (.hydra/, the log, the bench table and plot or
    the samples, results.json) is refused and lands whole in the fallback folder; one error line names it."""
    fill(small_disk, leave_pages=1)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    args = {"bench": [*ENDLESS[:-2], "bench.repeats=1"], "samples": [*FAST, "eval.log_samples=true"]}[kind]
    out = small_disk / "run"
    code, _, err = run_main(monkeypatch, capsys, *args, f"hydra.run.dir={out}")
    assert_one_line_error(code, err, f"in {out}", "No space left on device", "saved to")
    (fallback,) = (tmp_path / "tmp" / "tor_exp-unsaved").iterdir()
    assert str(fallback) in err
    record = json.loads((fallback / "results.json").read_text())
    assert record["status"] == "complete"
    assert (fallback / ".hydra" / "config.yaml").is_file() and "tor_exp.run" in (fallback / "tor_exp.log").read_text()
    if kind == "bench":
        assert (fallback / "bench_prefill.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (fallback / "bench_prefill.md").read_text().startswith("| B |")
    else:
        listed = [rel for per_task in record["samples"].values() for rel in per_task.values()]
        assert len(listed) == 4  # none and utrc × 2 tasks
        assert all(len((fallback / rel).read_text().splitlines()) == 2 for rel in listed)
    assert not leftovers(small_disk) and not (out / "results.json").exists()


def test_a_run_that_can_write_nowhere_fails_before_loading_the_model(small_disk, monkeypatch, capsys):
    fill(small_disk, leave_pages=0)
    monkeypatch.setenv("TMPDIR", str(small_disk))
    monkeypatch.setattr(tempfile, "tempdir", None)
    code, out, err = run_main(monkeypatch, capsys, *FAST, f"hydra.run.dir={small_disk / 'run'}")
    assert_one_line_error(code, err, "hydra.run.dir=", "No space left on device")
    assert "loaded in" not in out and not (small_disk / "run").exists()


@pytest.mark.slow
def test_sigterm_to_a_local_sweep_ends_every_job_process_before_it_reports(tmp_path):
    """launcher=local runs each job in its own processes (submitit's controller and the job): SIGTERM to the sweep
    ends all of them before the one line, so the interrupted job never writes its record afterwards."""
    import time

    import psutil

    sweep = tmp_path / "sweep"
    proc = start("-m", *ENDLESS, "launcher=local", "~local", "hydra.launcher.array_parallelism=1",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path, log=tmp_path / "sweep")
    tree: list = []
    try:
        running = wait_for("*/.tor_exp.owner", sweep, proc).parent
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 2, tree  # submitit's controller and the job
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"job processes outlived the sweep: {alive}"
        time.sleep(2)
        assert not (running / "results.json").exists() and not leftovers(sweep)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in tree:  # whatever outlived the sweep (on a launcher that leaves them)
            with contextlib.suppress(psutil.Error):
                p.kill()
    err = (tmp_path / "sweep.err").read_text()
    assert "Traceback" not in err
    assert error_lines(err)[-1] == ("interrupted: no job finished; nothing written for the job that was running; "
                                    "rerun with resume=true"), err


PINNED_NOW = """
import datetime, sys
import hydra.core.utils as hydra_utils
class Frozen(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 12, 7, 12, 0, 0)
hydra_utils.datetime = Frozen  # Hydra's ${now:} reads the clock through this name
from omegaconf import OmegaConf
from tor_exp.config import compose_dict
cfg = compose_dict(sys.argv[1:], return_hydra_config=True)
print(OmegaConf.select(cfg, "hydra.run.dir"))
print(OmegaConf.select(cfg, "hydra.sweep.dir"))
"""


def test_runs_started_in_the_same_second_get_their_own_default_folder(tmp_path):
    """The clock pinned to one second: two processes still resolve two default run folders (and sweep folders),
    both under that second's folder; a run dir given on the command line is used as it is."""
    def dirs(*overrides: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", PINNED_NOW, *overrides], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    first, second = dirs(), dirs()
    for run_dir, again in zip(first, second):
        assert run_dir != again
        assert Path(run_dir).parent == Path(again).parent and Path(run_dir).name.startswith("12-00-00-"), run_dir
    assert dirs(f"hydra.run.dir={tmp_path / 'mine'}")[0] == str(tmp_path / "mine")


@pytest.mark.slow
def test_two_default_runs_started_together_both_complete_in_two_folders(tmp_path):
    """The issue's case with real processes: the default folder, two runs at the same moment, both exit 0."""
    runs = [start(*FAST, "eval.limit=1", cwd=tmp_path, log=tmp_path / f"run{i}") for i in range(2)]
    codes = [proc.wait(timeout=300) for proc in runs]
    assert codes == [0, 0], [(tmp_path / f"run{i}.err").read_text()[-2000:] for i in range(2)]
    records = sorted((tmp_path / "outputs").rglob("results.json"))
    assert len(records) == 2 and records[0].parent != records[1].parent, records
    assert all(json.loads(r.read_text())["status"] == "complete" for r in records)
