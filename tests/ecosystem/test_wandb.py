"""W&B: explicit config > WANDB_* environment > defaults; disabled writes nothing; an offline run carries the
per-task table, summary values (no scalar history) and results.json (+ samples) as an artifact."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from tor_exp.errors import ConfigError
from tor_exp.records.config import LoggerConfig
from tor_exp.records.wandb_logger import TABLE_COLUMNS, log_to_wandb, task_rows

RESULTS = {
    "task": "eval", "method": "utrc", "model": "tiny_mamba2", "headline": 0.55,
    "metrics": {"piqa_fixture": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.75, "acc_norm_stderr": 0.05},
                "lambada_fixture": {"perplexity": 12.5, "perplexity_stderr": 2.0, "acc": 0.25}},
    "baseline": {"method": "none", "metrics": {"piqa_fixture": {"acc": 0.625, "acc_norm": 0.75},
                                               "lambada_fixture": {"perplexity": 10.0, "acc": 0.25}}},
    "differences": {"piqa_fixture": {"acc": {"delta": -0.125, "low": -0.3, "high": 0.05, "n": 8, "iters": 100}}},
    "samples": {"none": {"piqa_fixture": "samples/none/piqa_fixture.jsonl"},
                "utrc": {"piqa_fixture": "samples/utrc/piqa_fixture.jsonl"}},
    "timings": {"load_s": 1.5},
    "config": {"model": {"name": "tiny_mamba2"}},
}


@pytest.fixture()
def wandb_dirs(tmp_path, monkeypatch):
    """W&B's own folders (settings, cache, artifact staging) inside the test's tmp dir."""
    for var, sub in (("WANDB_CONFIG_DIR", "cfg"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    for per_task in RESULTS["samples"].values():
        for rel in per_task.values():
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / rel).write_text(json.dumps({"doc_id": 0, "rel": rel}) + "\n")
    (run_dir / "results.json").write_text(json.dumps(RESULTS))
    return run_dir


@pytest.mark.parametrize("config, env, expected", [
    ({}, {}, ("offline", "tor_exp", None)),
    ({}, {"WANDB_MODE": "disabled", "WANDB_PROJECT": "p", "WANDB_ENTITY": "e"}, ("disabled", "p", "e")),
    ({}, {"WANDB_MODE": "dryrun"}, ("offline", "tor_exp", None)),  # W&B's old spelling of offline
    ({"mode": "online", "project": "mine", "entity": "me"}, {"WANDB_MODE": "disabled", "WANDB_PROJECT": "p",
                                                             "WANDB_ENTITY": "e"}, ("online", "mine", "me")),
    ({"project": "mine"}, {"WANDB_MODE": "online", "WANDB_PROJECT": "p"}, ("online", "mine", None)),
])
def test_explicit_config_beats_the_environment_which_beats_the_defaults(config, env, expected):
    got = LoggerConfig(backend="wandb", **config).resolved(env)
    assert (got.mode, got.project, got.entity) == expected


def test_the_composed_wandb_logger_leaves_mode_project_entity_to_the_environment(compose, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = compose("logger=wandb").logger
    assert (logger.mode, logger.project, logger.entity) == (None, None, None)
    assert logger.resolved().mode == "disabled"
    assert compose("logger=wandb", "logger.mode=offline").logger.resolved().mode == "offline"


def test_a_bad_wandb_mode_fails_at_config_time_naming_the_variable(compose, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes'"):
        compose("logger=wandb")
    compose("logger=wandb", "logger.mode=offline")  # an explicit mode does not read it


def test_task_rows_carry_stderr_baseline_and_the_difference_interval():
    rows = {(r[1], r[2]): dict(zip(TABLE_COLUMNS, r)) for r in task_rows(RESULTS)}
    assert set(rows) == {("piqa_fixture", "acc"), ("piqa_fixture", "acc_norm"), ("lambada_fixture", "perplexity"),
                         ("lambada_fixture", "acc")}  # stderr keys are columns, not rows
    assert rows[("piqa_fixture", "acc")] == {"method": "utrc", "task": "piqa_fixture", "metric": "acc", "value": 0.5,
                                             "stderr": 0.1, "none": 0.625, "difference": -0.125, "low": -0.3,
                                             "high": 0.05}
    assert rows[("lambada_fixture", "acc")]["stderr"] is None and rows[("lambada_fixture", "acc")]["low"] is None
    assert rows[("lambada_fixture", "perplexity")]["none"] == 10.0


def test_disabled_through_the_environment_writes_nothing(tmp_path, monkeypatch, wandb_dirs):
    """WANDB_MODE=disabled with logger=wandb: W&B is not even started, no wandb/ folder in the run dir."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called although disabled"))
    run_dir = _run_dir(tmp_path)
    assert log_to_wandb(LoggerConfig(backend="wandb"), RESULTS, run_dir, "r", None) is None
    assert not (run_dir / "wandb").exists()


def test_disabled_job_end_to_end_writes_no_wandb_folder(tmp_path, monkeypatch, wandb_dirs):
    from tor_exp.config import compose_dict
    from tor_exp.run import run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "job"
    results = run(compose_dict(["model=tiny_mamba2", "eval=smoke", "eval.tasks=[piqa_fixture]", "eval.limit=1",
                                "eval.compare_baseline=false", "logger=wandb", "device=cpu"]), out_dir=out)
    assert results["status"] == "complete" and (out / "results.json").is_file()
    assert not (out / "wandb").exists() and not list(tmp_path.rglob("*.wandb"))


def _md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.mark.parametrize("task", ["eval", "bench"])
def test_offline_run_gets_table_summary_and_artifact(task, tmp_path, monkeypatch, wandb_dirs):
    """A real offline run (WANDB_PROJECT from the environment); what was handed to wandb is recorded by wrapping
    its own objects, and the table file W&B writes is read back (the .wandb log itself is binary)."""
    import wandb

    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    results = dict(RESULTS, task=task)
    run_dir = _run_dir(tmp_path)
    seen: dict = {"logs": [], "artifacts": []}
    real_init = wandb.init

    def init(**kwargs):
        seen["init"] = kwargs
        run = real_init(**kwargs)
        real_log, real_log_artifact, real_finish = run.log, run.log_artifact, run.finish
        monkeypatch.setattr(run, "log", lambda data, *a, **k: (seen["logs"].append(data), real_log(data, *a, **k))[1])
        monkeypatch.setattr(run, "log_artifact",
                            lambda art, *a, **k: (seen["artifacts"].append(art), real_log_artifact(art, *a, **k))[1])
        monkeypatch.setattr(run, "finish", lambda *a, **k: (seen.update(summary=dict(run.summary)),
                                                            real_finish(*a, **k))[1])
        return run

    monkeypatch.setattr(wandb, "init", init)
    log_to_wandb(LoggerConfig(backend="wandb", mode="offline"), results, run_dir, "tiny-utrc", "sweep-1")

    assert seen["init"]["job_type"] == task and seen["init"]["mode"] == "offline"
    assert seen["init"]["project"] == "from-env" and seen["init"]["group"] == "sweep-1"
    summary = seen["summary"]
    assert summary["metrics/piqa_fixture/acc"] == 0.5 and summary["metrics/piqa_fixture/acc_stderr"] == 0.1
    assert summary["differences/piqa_fixture/acc/low"] == -0.3 and summary["avg_acc"] == pytest.approx(55.0)
    # no scalar history (one-point charts): the only logged value is the table
    assert [sorted(d) for d in seen["logs"]] == [["results"]]
    (table_file,) = (run_dir / "wandb").glob("offline-run-*/files/media/table/results_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == TABLE_COLUMNS
    assert ["utrc", "piqa_fixture", "acc", 0.5, 0.1, 0.625, -0.125, -0.3, 0.05] in table["data"]
    (artifact,) = [a for a in seen["artifacts"] if a.type == "results"]  # W&B stores the table as one too
    entries = artifact.manifest.entries
    expected = {"results.json", "samples/none/piqa_fixture.jsonl", "samples/utrc/piqa_fixture.jsonl"}
    assert set(entries) == expected
    assert all(entries[name].digest == _md5_b64(run_dir / name) for name in expected)
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


# ------------------------------------------------------------------------------------------------ before the work
SWEEP = ["-m", "model=tiny_mamba2", "eval=smoke", "eval.tasks=[piqa_fixture]", "eval.limit=1",
         "eval.compare_baseline=false", "device=cpu", "reduction.target_flops=0.1,0.2", "logger=wandb"]


def _entry(args: list[str], tmp_path: Path, **env: str):
    """``python -m tor_exp <args>`` as a real process with W&B's folders in ``tmp_path``: (result, seconds)."""
    import os
    import subprocess
    import sys
    import time

    environ = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environ.update(OMP_NUM_THREADS="1", WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "wandb-home" / "cfg"),
                   WANDB_CACHE_DIR=str(tmp_path / "wandb-home" / "cache"), WANDB_DATA_DIR=str(tmp_path / "wandb-home"),
                   HOME=str(tmp_path), **env)  # HOME: no ~/.netrc key
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "tor_exp", *args], cwd=tmp_path, env=environ, capture_output=True,
                         text=True, timeout=600)
    return out, time.monotonic() - t0


def _one_line(out, *needles: str) -> str:
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_online_without_an_api_key_is_one_line_before_any_job_of_a_sweep(tmp_path):
    """No API key: the sweep stops before its first job (nothing computed, no job folder), in one line."""
    out, seconds = _entry([*SWEEP, "logger.mode=online", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    _one_line(out, "mode=online", "no W&B API key")
    assert not list(tmp_path.rglob("results.json")) and seconds < 120


def test_an_unreachable_wandb_fails_in_seconds_before_the_work(tmp_path):
    """A key but no server (a closed loopback port): the job fails after logger.init_timeout, before it loads the
    model, in one line; nothing is recorded as complete."""
    out, seconds = _entry(["model=tiny_mamba2", "eval=smoke", "device=cpu", "logger=wandb", "logger.mode=online",
                           "logger.init_timeout=3", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
                          WANDB_API_KEY="a" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    _one_line(out, "mode=online", "could not start a run")
    assert not (tmp_path / "run" / "results.json").exists() and "loaded in" not in out.stderr + out.stdout
    assert seconds < 120, seconds


def test_offline_fallback_logs_offline_when_online_cannot_start(tmp_path):
    out, _ = _entry(["model=tiny_mamba2", "eval=smoke", "eval.tasks=[piqa_fixture]", "eval.limit=1",
                     "eval.compare_baseline=false", "device=cpu", "logger=wandb", "logger.mode=online",
                     "logger.offline_fallback=true", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["wandb"]["mode"] == "offline" and record["wandb"]["logged"] is True
    assert list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{record['wandb']['run_id']}"))


def test_a_complete_record_not_yet_logged_is_uploaded_on_rerun_without_recomputing(tmp_path, monkeypatch,
                                                                                    wandb_dirs):
    """A record written without W&B (or whose upload failed): the resume filter says there is work left, and a
    resume=true rerun with logger=wandb logs it from results.json (its numbers and timings unchanged) and marks
    it; a third run has nothing left to do."""
    from omegaconf import OmegaConf

    from tor_exp.config import compose_dict
    from tor_exp.records.results import is_complete
    from tor_exp.run import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    job = ["model=tiny_mamba2", "eval=smoke", "eval.tasks=[piqa_fixture]", "eval.limit=1",
           "eval.compare_baseline=false", "device=cpu"]
    out = tmp_path / "job"
    first = run(compose_dict(job), out_dir=out)
    assert "wandb" not in first
    wandb_job = compose_dict([*job, "logger=wandb"])
    assert is_complete(out, compose_dict(job)) and not is_complete(out, wandb_job)
    monkeypatch.setattr("tor_exp.run._run_in", lambda *a, **k: pytest.fail("recomputed"))
    second = run(wandb_job, out_dir=out)
    record = json.loads((out / "results.json").read_text())
    assert record["wandb"]["logged"] is True and record["wandb"]["mode"] == "offline"
    assert {k: v for k, v in record.items() if k != "wandb"} == json.loads(json.dumps(first))
    assert second["metrics"] == first["metrics"] and is_complete(out, OmegaConf.to_container(wandb_job,
                                                                                               resolve=True))
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    run(wandb_job, out_dir=out)  # nothing left: no second W&B run
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
