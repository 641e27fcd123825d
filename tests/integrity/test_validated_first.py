"""Issue 29, cases 4, 10, 15 and 16: what a job can know is wrong is refused before it loads a model or takes its
folder, in one line, the same through ``python -m tor_exp`` and lm-eval's ``model_args``; what the user meant is
run (``model=<checkpoint dir>``, a relative ``model.path``, an unwritable HOME's datasets cache).

Most cases compose / validate in-process or call the entry point in-process (:func:`entry_helpers.run_main`); one
case runs a real process (the HOME it sees must be unwritable from its start).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from entry_helpers import assert_one_line_error, run_main

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "tor_exp" / "reference" / "assets"
TINY = ["model=tiny_mamba2", "eval=smoke", "eval.limit=1", "device=cpu"]


def _error(overrides: list[str]) -> str:
    from tor_exp.config import compose
    from tor_exp.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose(overrides)
    return str(err.value)


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    """A saved HF-format checkpoint (the bundled reference model's files) in ``tmp_path/ckpt``."""
    target = tmp_path / "ckpt"
    target.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REFERENCE / name, target)
    return target


# ------------------------------------------------------------------------------------------ 4: unknown keys
@pytest.mark.parametrize("key, value, schema, label", [
    ("reduction.qq", "0.9", "tor_exp.reduction.utrc:UTRCConfig", "reduction=utrc"),
    ("model.attn_implementation", "flash_attention_2", "tor_exp.models.config:ModelConfig", "model=tiny_mamba2"),
    ("model.tiny.heads", "4", "tor_exp.models.config:TinyModelConfig", "model.tiny"),
    ("eval.foo", "1", "tor_exp.evaluation.config:EvalConfig", "eval=smoke"),
])
def test_an_unknown_key_is_refused_with_or_without_plus(key, value, schema, label):
    """The schema decides, not Hydra's struct flag: ``+key=value`` was composed and silently dropped."""
    import importlib

    module, name = schema.split(":")
    fields = ", ".join(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)))
    expected = f"{key}: not a key of {label} (keys: {fields})"
    assert _error([*TINY, f"+{key}={value}"]) == expected
    assert _error([*TINY, f"{key}={value}"]) == expected


def test_free_form_keys_stay_allowed_and_reach_the_model():
    """``model.tiny.config`` is a dict of the family's own HF config keys, ``local`` this machine's settings."""
    from tor_exp.config import compose

    v = compose([*TINY, "+model.tiny.config.rms_norm=false", "+local.slurm.partition=gpu"])
    assert v.model.tiny.config == {"rms_norm": False}
    assert "not a key of tor_exp's config" in _error([*TINY, "+bogus=1"])


def test_unknown_key_same_line_from_both_entry_points(tmp_path, monkeypatch, capsys):
    from tor_exp.errors import ConfigError
    from tor_exp.lm_eval import check_model_args

    code, _, err = run_main(monkeypatch, capsys, "model=tiny_mamba2", "+model.attn_implementation=flash_attention_2",
                            "device=cpu", f"hydra.run.dir={tmp_path / 'out'}")
    assert_one_line_error(code, err, "model.attn_implementation: not a key of model=tiny_mamba2")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError) as lm_eval_err:
        check_model_args({"model": "tiny_mamba2", "model.attn_implementation": "flash_attention_2"})
    assert f"error: {lm_eval_err.value}" == err.strip()


# ------------------------------------------------------------------------------------------ 15: model paths
def test_model_equals_a_checkpoint_dir_means_model_local(checkpoint, tmp_path, monkeypatch):
    from tor_exp.config import compose
    from tor_exp.lm_eval import _ABSENT, compose_model_args

    monkeypatch.chdir(tmp_path)
    for spelling in (str(checkpoint), "ckpt", "./ckpt"):
        v = compose([f"model={spelling}"])
        assert (v.model.source, v.model.path) == ("local", str(checkpoint))
    assert compose_model_args("./ckpt", _ABSENT, {}).model.path == str(checkpoint)  # lm-eval's pretrained=
    assert _error(["model=./nothere"]) == f"model=./nothere: no such option or directory ({tmp_path / 'nothere'})"


@pytest.mark.parametrize("model, path", [("local", "nothere"), ("mamba2_130m", "ckpts/nothere/v1"),
                                         ("mamba2_130m", "./nothere"), ("mamba_130m", "/nonexistent-tor-exp/ckpt")])
def test_a_missing_path_is_one_line_never_a_hub_id(model, path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _error([f"model={model}", f"model.path={path}"]).startswith(f"model.path={path}: no such directory")


def test_a_hub_id_stays_a_hub_id(tmp_path, monkeypatch):
    from tor_exp.config import compose

    monkeypatch.chdir(tmp_path)
    assert compose(["model=mamba2_130m", "model.path=state-spaces/mamba2-370m"]).model.path == \
        "state-spaces/mamba2-370m"


def test_relative_model_path_with_job_chdir_runs_and_records_the_absolute_path(checkpoint, tmp_path, monkeypatch,
                                                                               capsys):
    """``hydra.job.chdir=true`` moves the job into its folder; the path still means the launch directory."""
    import json

    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "model=local", "model.path=ckpt", "eval=smoke", "eval.limit=1",
                            "eval.compare_baseline=false", "device=cpu", "hydra.job.chdir=true",
                            f"hydra.run.dir={tmp_path / 'out'}")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["config"]["model"]["path"] == str(checkpoint)


# ------------------------------------------------------------------------------------------ 16: validated first
@pytest.fixture()
def no_task_index(monkeypatch):
    """lm-eval's full task index (12-15 s) stood in by an empty one: names it would not know either."""
    import tor_exp.evaluation.config as eval_config

    calls = []
    monkeypatch.setattr(eval_config, "indexed_task_names", lambda paths: calls.append(paths) or set())
    return calls


def test_known_task_names_need_no_task_index(no_task_index):
    from tor_exp.config import compose

    compose(["eval=offline", "eval.tasks=[reference_heldout,reference_heldout_mc]"])
    compose([*TINY, "eval.tasks=[tor_exp_fixtures,winogrande_fixture]"])  # a tag and a task
    compose([*TINY, "eval.tasks=[piqa,hellaswag,mmlu]"])  # lm-eval's own, found in its task files
    assert no_task_index == []
    assert "eval.tasks: unknown lm-eval task(s) ['lambada_fixtur']" in _error([*TINY, "eval.tasks=[lambada_fixtur]"])
    assert len(no_task_index) == 1  # asked once, for the name the bundled folders lack


@pytest.mark.parametrize("args, needle", [
    (("-m", "eval.tasks=[piqa_fixture],[no_such_task]"), "eval.tasks: unknown lm-eval task(s) ['no_such_task']"),
    (("-m", "reduction=none,ltmp", "model.calibration_text=missing.txt"), "model.calibration_text=missing.txt"),
    (("-m", "task=bench", "bench.seq_lens=[32]", "bench.flops_targets=[0.2,0.9]"),
     "bench.flops_targets=[0.2, 0.9]: reduction.target_flops=0.9: above the 0.6875 reachable"),
])
def test_a_bad_job_is_refused_before_the_first_job_runs(args, needle, no_task_index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, *TINY, *args, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "sweep").exists()  # no job folder taken, no model loaded


def test_device_cuda_without_a_gpu_is_refused_up_front(tmp_path, monkeypatch, capsys):
    import torch

    from tor_exp.config import compose_dict, validate

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_main(monkeypatch, capsys, *TINY, "device=cuda", f"hydra.run.dir={tmp_path / 'out'}")
    assert_one_line_error(code, err, "device='cuda': no CUDA device")
    assert not (tmp_path / "out").exists()
    # a Slurm job runs on its own node: the login node's lack of a GPU is not checked there
    validate(compose_dict([*TINY, "device=cuda"]), check_device=False)


# ------------------------------------------------------------------------------------------ 10: unwritable HOME
def test_an_unwritable_datasets_cache_is_replaced_or_one_line(tmp_path, monkeypatch):
    """/proc refuses new files even to root."""
    import tempfile

    from tor_exp.errors import ConfigError
    from tor_exp.paths import usable_datasets_cache

    monkeypatch.setenv("HF_DATASETS_CACHE", "/proc/tor_exp_test/datasets")
    if "datasets.config" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets.config"], "HF_DATASETS_CACHE", Path("/proc/tor_exp_test/datasets"))
        for name in ("DOWNLOADED_DATASETS_PATH", "EXTRACTED_DATASETS_PATH"):
            monkeypatch.setattr(sys.modules["datasets.config"], name, getattr(sys.modules["datasets.config"], name))
    monkeypatch.setattr(tempfile, "tempdir", "/proc")
    with pytest.raises(ConfigError, match="HF_DATASETS_CACHE=/proc/tor_exp_test/datasets: .*set HF_DATASETS_CACHE"):
        usable_datasets_cache()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    used = usable_datasets_cache()
    assert used.startswith(str(tmp_path)) and os.environ["HF_DATASETS_CACHE"] == used
    if "datasets.config" in sys.modules:
        assert str(sys.modules["datasets.config"].HF_DATASETS_CACHE) == used


def test_an_eval_run_with_an_unwritable_home_completes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME")}
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(HOME="/proc/tor_exp_no_home", TMPDIR=str(tmp_path), PYTHONPATH=path, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tor_exp", *TINY, "eval.compare_baseline=false",
                           f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "results.json").is_file()
    assert "using " + str(tmp_path) in proc.stderr + proc.stdout  # the log line names the cache it used
