"""End to end: the smoke sweep (tiny Mamba-2, one fixture task) completes and, run again, resumes in place.

In process: Hydra's basic launcher (both jobs, then a rerun that skips both, then a rerun after one job's
results.json was lost, as a killed sweep leaves it), and tor_exp's launchers' pre-submission filter on the same
jobs. Through ``launcher=local`` (one process per job, each with its own GPU id): the same sweep completes, and
run again starts no job.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SKIP_MESSAGE = "skipped (resume=true)"
# readable prefix (model/method/FLOPs) + the job's other overrides
JOBS = ("tiny_mamba2/none/f0.0/eval.limit=2", "tiny_mamba2/utrc/f0.2/eval.limit=2")


def sweep_args(sweep_dir: Path) -> list[str]:
    # eval.limit=2: two LAMBADA fixture requests per job keep each job at a few seconds on one CPU thread
    return ["-m", "experiment=smoke", f"hydra.sweep.dir={sweep_dir}", "eval.limit=2"]


def run_in_process(monkeypatch, args: list[str]) -> None:
    from hydra.core.global_hydra import GlobalHydra

    import tor_exp.__main__ as entry

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["tor_exp", *args])
    try:
        entry.main()
    finally:
        GlobalHydra.instance().clear()


def snapshot(sweep_dir: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for job in JOBS:
        path = sweep_dir / job / "results.json"
        out[job] = (path.stat().st_mtime_ns, path.read_text())
    return out


def check_results(sweep_dir: Path) -> None:
    for job in JOBS:
        res = json.loads((sweep_dir / job / "results.json").read_text())
        assert res["status"] == "complete" and res["model"] == "tiny_mamba2"
        assert res["num_requests"] == {"lambada_fixture": 2}
        assert res["config"]["logger"]["group"] == "smoke"
        if "/none/" in job:
            assert res["method"] == "none" and res["realised_flops_reduction"] == 0.0
        else:
            assert res["method"] == "utrc" and res["target_flops"] == 0.2
            assert 0.0 < res["realised_flops_reduction"] <= 0.5
            assert res["keep_ratio"] < 1.0


def completed_sweep(tmp_path, monkeypatch, capsys) -> tuple[Path, dict]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = tmp_path / "multirun" / "smoke"
    run_in_process(monkeypatch, sweep_args(sweep))
    first = capsys.readouterr().out
    assert first.count(SKIP_MESSAGE) == 0
    check_results(sweep)
    before = snapshot(sweep)

    run_in_process(monkeypatch, sweep_args(sweep))
    second = capsys.readouterr().out
    assert second.count(SKIP_MESSAGE) == 2
    assert snapshot(sweep) == before  # nothing rewritten
    return sweep, before


def test_smoke_sweep_completes_and_resumes_in_process(tmp_path, monkeypatch, capsys):
    """Both jobs run, then a rerun of the same command skips both (results.json untouched); the report of the
    real sweep shows the results.json numbers (lambada_fixture → the LAMBADA columns)."""
    from tor_exp.report import build_report, format_value

    sweep, _ = completed_sweep(tmp_path, monkeypatch, capsys)
    built = build_report(sweep, tmp_path / "report", plots=False)
    table = built["markdown"].splitlines()
    header = [c.strip() for c in next(l for l in table if l.startswith("| Model")).strip("|").split("|")]
    lines = [l for l in table if l.startswith("| tiny_mamba2")]
    assert len(lines) == 2
    for job, line in zip(JOBS, lines):
        res = json.loads((sweep / job / "results.json").read_text())
        m = res["metrics"]["lambada_fixture"]
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        assert cells["Method"] == ("baseline" if res["method"] == "none" else "Ours (UTRC)")
        ppl, acc, avg = (next(h for h in header if h.startswith(p)) for p in ("LAMBADA PPL", "LAMBADA Acc", "Avg."))
        assert cells[ppl] == f"{format_value('lambada_ppl', m['perplexity'])} / –"
        assert cells[acc] == f"{format_value('lambada_acc', 100 * m['acc'])} / –"
        assert cells[avg] == cells[acc]  # Avg. over the one accuracy present
        # the paper's columns with no number in any row (ours or the paper's) are left out
        assert not any(h.startswith(("HellaSwag", "PIQA", "Wino")) for h in header)


def test_killed_and_changed_sweeps_rerun_only_what_is_missing(tmp_path, monkeypatch, capsys):
    sweep, before = completed_sweep(tmp_path, monkeypatch, capsys)

    # a killed sweep: one job never wrote results.json → only that job runs again
    lost = sweep / JOBS[1] / "results.json"
    lost.unlink()
    run_in_process(monkeypatch, sweep_args(sweep))
    third = capsys.readouterr().out
    assert third.count(SKIP_MESSAGE) == 1
    after = snapshot(sweep)
    assert after[JOBS[0]] == before[JOBS[0]]
    redone, old = json.loads(after[JOBS[1]][1]), json.loads(before[JOBS[1]][1])
    assert redone["config_hash"] == old["config_hash"]
    assert redone["metrics"] == old["metrics"]  # deterministic: same seed, same tiny model

    # another value of an overridden key is another job folder: computed there, the first results untouched
    run_in_process(monkeypatch, sweep_args(sweep)[:-1] + ["eval.limit=3"])
    assert capsys.readouterr().out.count(SKIP_MESSAGE) == 0
    other = sweep / JOBS[0].replace("eval.limit=2", "eval.limit=3") / "results.json"
    assert json.loads(other.read_text())["num_requests"] == {"lambada_fixture": 3}
    assert snapshot(sweep)[JOBS[0]] == before[JOBS[0]]


def test_launcher_filter_leaves_out_exactly_the_jobs_that_would_skip_themselves(tmp_path, monkeypatch, capsys):
    """The pre-submission filter composes each job's own output dir, whatever the layout (here Hydra's
    ``<num>_<override_dirname>`` subdirs), and applies the job's own resume rule: after a finished sweep nothing
    is submitted, after a lost result only that job, with resume=false every job."""
    from hydra.core.utils import JobReturn, JobStatus

    from tor_exp.launcher import LocalLauncher

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = tmp_path / "multirun" / "layout"
    args = sweep_args(sweep) + ["hydra.sweep.subdir=${hydra.job.num}_${hydra.job.override_dirname}"]
    run_in_process(monkeypatch, args)  # Hydra's basic launcher: the jobs write their own results
    found = sorted(str(p.parent.relative_to(sweep)) for p in sweep.rglob("results.json"))
    assert found == ["0_eval.limit=2", "1_eval.limit=2"]  # the experiment leaves its cells out of override_dirname

    submitted: list[list[int]] = []

    class Completed:  # a submitted job's handle, its job done
        def result(self) -> JobReturn:
            return JobReturn(status=JobStatus.COMPLETED)

    def record(self, pending):
        submitted.append([job.num for job in pending])
        return [Completed() for _ in pending]

    monkeypatch.setattr(LocalLauncher, "submit", record)
    run_in_process(monkeypatch, args + ["launcher=local"])
    assert submitted == []
    assert "2 job(s), 2 already complete" in capsys.readouterr().out
    (sweep / found[1] / "results.json").unlink()
    run_in_process(monkeypatch, args + ["launcher=local"])
    assert submitted == [[1]]
    run_in_process(monkeypatch, args + ["launcher=local", "resume=false"])
    assert submitted == [[1], [0, 1]]


def test_smoke_sweep_through_launcher_local_one_gpu_per_job_then_resumes_without_starting_jobs(tmp_path):
    """launcher=local: each job is its own process (submitit) with its own CUDA_VISIBLE_DEVICES (two GPUs as far
    as the launcher can tell; the smoke experiment runs on the CPU, which this machine has); run again, the finished
    sweep starts no process at all."""
    sweep = tmp_path / "multirun" / "smoke"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    cmd = [sys.executable, "-m", "tor_exp", *sweep_args(sweep), "launcher=local", "~local",
           "hydra.launcher.gpus_per_node=1"]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    check_results(sweep)
    logs = sorted((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2  # two submitit jobs
    given = sorted(re.search(r"CUDA_VISIBLE_DEVICES='(.*?)'", p.read_text()).group(1) for p in logs)
    assert given == ["0", "1"]
    before = snapshot(sweep)

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 job(s), 2 already complete (resume=true, not submitted), 0 to run" in second.stdout + second.stderr
    assert snapshot(sweep) == before
    assert sorted((sweep / ".submitit").rglob("*_log.out")) == logs
