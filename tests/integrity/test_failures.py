"""Ordinary mistakes end in one line ``error: ...`` and exit code 2 — never a traceback, never a lost number.

Most cases call the entry point in-process (``tor_exp.__main__.main`` with ``sys.argv`` set), which is what
``python -m tor_exp`` runs, minus the interpreter start; one case goes through a real subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from entry_helpers import FAST, assert_one_line_error, run_main

REFERENCE = Path(__file__).resolve().parents[2] / "tor_exp" / "reference" / "assets"


@pytest.fixture()
def damaged(tmp_path) -> dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("empty", "truncated", "not_json")}
    for d in dirs.values():
        d.mkdir()
    shutil.copy(REFERENCE / "config.json", dirs["truncated"])
    (dirs["truncated"] / "model.safetensors").write_bytes((REFERENCE / "model.safetensors").read_bytes()[:100_000])
    (dirs["not_json"] / "config.json").write_text("{not json")
    shutil.copy(REFERENCE / "model.safetensors", dirs["not_json"])
    return dirs


@pytest.mark.parametrize("name, needle", [("empty", "model.safetensors"), ("truncated", "SafetensorError"),
                                          ("not_json", "JSON"), ("missing", "no such directory")])
def test_damaged_or_missing_model_dir(name, needle, damaged, tmp_path, monkeypatch, capsys):
    path = damaged.get(name, tmp_path / "missing")
    code, _, err = run_main(monkeypatch, capsys, "model=reference", f"model.path={path}", "model.tokenizer=byte",
                            "eval=smoke", "eval.limit=1", f"hydra.run.dir={tmp_path / 'out'}")
    assert_one_line_error(code, err, "model.path", needle)
    assert not (tmp_path / "out" / "results.json").exists()


def test_hub_model_without_network_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    code, _, err = run_main(monkeypatch, capsys, "model=mamba2_130m", f"hydra.run.dir={tmp_path / 'out'}")
    assert_one_line_error(code, err, "state-spaces/mamba2-130m", "not in the local Hugging Face cache")


@pytest.mark.parametrize("args, needles", [
    (("task=generate", "prompt="), ("prompt",)),
    (("-m", "reduction.q=-1,0.5"), ("reduction.q=-1]: reduction.q=-1.0: must be in",)),
    (("-m", "reduction.q=0.5", "reduction.locations=[1,2,x]"), ("reduction.locations",)),
])
def test_bad_values_incl_one_bad_job_of_a_multirun(args, needles, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, *FAST, *args, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                            f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(code, err, *needles)
    assert not list(tmp_path.rglob("results.json"))  # nothing ran


@pytest.mark.parametrize("args, needles", [
    (("reduction=UTRC",), ("reduction=UTRC", "no such option", "utrc, utrc_official")),
    (("model=mamba3",), ("model=mamba3", "tiny_mamba2")),
    (("+experiment/cell=[utrc,f25]",), ("experiment/cell=f25", "f20")),
])
def test_an_unknown_group_option_names_the_key_and_the_choices(args, needles, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(code, err, *needles)
    assert "_schema" not in err  # tor_exp's stored schemas are not options to pick


@pytest.mark.parametrize("where", ["run dir", "cwd"])
def test_a_place_that_takes_no_file_is_one_line_before_anything_runs(where, monkeypatch, capsys):
    """/proc lets root pass every permission check and still refuses every new file."""
    if where == "cwd":
        monkeypatch.chdir("/proc")  # the default run dir outputs/... is relative
        args = FAST
    else:
        args = [*FAST, "hydra.run.dir=/proc/x"]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "hydra.run.dir=", "cannot write in /proc")
    assert "loaded in" not in out


def test_run_dir_under_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("x")
    code, _, err = run_main(monkeypatch, capsys, *FAST, f"hydra.run.dir={tmp_path / 'a_file' / 'run'}")
    assert_one_line_error(code, err, "hydra.run.dir", "is a file")


def test_long_overrides_in_a_multirun_get_a_short_job_folder(tmp_path, monkeypatch, capsys):
    """A long value (here a 40-location list) would make a file name longer than the file system allows."""
    monkeypatch.chdir(tmp_path)
    locations = "[" + ",".join(str(i) for i in range(1, 15)) + "]"
    code, _, err = run_main(monkeypatch, capsys, "-m", *FAST, f"reduction.locations={locations}",
                            "reduction.keep_ratio=0.9,0.8", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, err
    folders = sorted(p.parent for p in (tmp_path / "sweep").rglob("results.json"))
    assert len(folders) == 2 and all(len(p.name) <= 120 for p in folders)
    assert len({p.name for p in folders}) == 2


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) → the SHA-256 of its bytes."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_different_config_never_replaces_a_complete_record(tmp_path, monkeypatch, capsys):
    """A refused run leaves the folder byte-identical: results.json, the log and .hydra/ (which must keep naming
    the config that produced results.json), no file added."""
    out = tmp_path / "run"
    code, _, err = run_main(monkeypatch, capsys, *FAST, f"hydra.run.dir={out}")
    assert code == 0, err
    first, before = (out / "results.json").read_text(), snapshot(out)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "results.json", "tor_exp.log"} <= set(before)
    code, _, err = run_main(monkeypatch, capsys, *FAST, "reduction.q=0.3", f"hydra.run.dir={out}")
    assert_one_line_error(code, err, "another config", "overwrite=true")
    assert snapshot(out) == before
    code, _, err = run_main(monkeypatch, capsys, *FAST, "reduction.q=0.3", "overwrite=true", f"hydra.run.dir={out}")
    assert code == 0, err
    (kept,) = out.glob("results.json.replaced-*")
    assert kept.read_text() == first
    assert json.loads((out / "results.json").read_text())["config"]["reduction"]["q"] == 0.3
    assert "q: 0.3" in (out / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[1, 2, 3]", b'{"status": "compl'])
def test_a_damaged_record_is_moved_aside_and_the_job_recomputes(content, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_bytes(content)
    code, stdout, err = run_main(monkeypatch, capsys, *FAST, f"hydra.run.dir={out}")
    assert code == 0, err
    (kept,) = out.glob("results.json.corrupt-*")
    assert kept.read_bytes() == content
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    assert "moved to results.json.corrupt-" in stdout + err


def test_an_unwritable_results_file_still_saves_the_numbers(tmp_path, monkeypatch, capsys):
    """The output dir refuses results.json at the end: the record lands in a fallback file named in the error."""
    import tempfile

    import tor_exp.records.folder as folder
    from tor_exp.records.files import atomic_write

    def refuse(path, data):
        if Path(path) == tmp_path / "run" / "results.json":
            raise OSError(28, "No space left on device")
        return atomic_write(path, data)

    monkeypatch.setattr(folder, "atomic_write", refuse)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    code, _, err = run_main(monkeypatch, capsys, *FAST, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(code, err, "could not write results.json", "No space left on device", "saved to")
    (saved,) = (tmp_path / "tmp").rglob("results.json")
    assert str(saved.parent) in err
    assert json.loads(saved.read_text())["status"] == "complete"
    assert not list((tmp_path / "run").glob("*.tmp")) and not (tmp_path / "run" / "results.json").exists()


def test_the_log_file_holds_what_ran_the_flops_and_where_results_went(tmp_path, monkeypatch, capsys):
    """... and the run leaves the logging setup as it found it: Hydra binds its console handler to the sys.stdout
    of the moment (here the test's capture, closed after the test); left on the root logger, it made every later
    log call print "--- Logging error ---"."""
    import logging

    root = logging.getLogger()
    before = root.handlers[:]
    out = tmp_path / "run"
    code, _, err = run_main(monkeypatch, capsys, *FAST, f"hydra.run.dir={out}")
    assert code == 0, err
    assert root.handlers == before
    log = (out / "tor_exp.log").read_text()
    assert "task=eval model=tiny_mamba2 reduction=utrc" in log
    assert "realised backbone FLOPs reduction" in log
    assert f"results: {out / 'results.json'}" in log


def test_cli_subprocess_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tor_exp", "-m", "reduction.q=-1,0.5",
                           f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "reduction.q")


def test_a_sweep_with_an_extra_axis_gives_one_result_per_job(tmp_path, monkeypatch, capsys):
    """experiment=smoke has 2 cells; seed=0,1 doubles it: 4 jobs, 4 folders, 4 results, distinct W&B names."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "-m", "experiment=smoke", "seed=0,1", "eval.limit=1",
                            f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, err
    found = sorted(str(p.parent.relative_to(tmp_path / "sweep")) for p in (tmp_path / "sweep").rglob("results.json"))
    assert found == [f"tiny_mamba2/{cell}/eval.limit=1,seed={seed}" for cell in ("none/f0.0", "utrc/f0.2")
                     for seed in (0, 1)]
    records = [json.loads((tmp_path / "sweep" / f / "results.json").read_text()) for f in found]
    assert [r["config"]["seed"] for r in records] == [0, 1, 0, 1]
    assert len({r["run_name"] for r in records}) == 4
