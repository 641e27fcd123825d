"""The entry point end to end on the tiny model: results.json contents, resume, generate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tor_exp.models import ModelConfig, build_schedule
from tor_exp.reduction.utrc import UTRCConfig


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "tor_exp", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("smoke")
    proc = _run("model=tiny_mamba2", "eval=smoke", "eval.limit=4", f"hydra.run.dir={out}", cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_results_json_has_the_documented_fields(smoke_run) -> None:
    out, proc = smoke_run
    results = json.loads((out / "results.json").read_text())
    for key in ("model", "method", "target_flops", "keep_ratio", "realised_flops_reduction", "metrics", "timings",
                "versions", "git_commit", "config", "baseline", "flops_per_task", "locations"):
        assert key in results, key
    assert results["model"] == "tiny_mamba2" and results["method"] == "utrc"
    assert results["target_flops"] == pytest.approx(0.2)
    # ρ in results is the solver's ρ for this model and target
    schedule = build_schedule(UTRCConfig(target_flops=0.2), ModelConfig(**{k: v for k, v in
                                                                           results["config"]["model"].items()
                                                                           if k != "tiny"}))
    assert results["keep_ratio"] == pytest.approx(schedule.keep_ratio)
    assert results["locations"] == list(schedule.locations)
    # short prompts with protected continuations reduce less than the target, never more
    assert 0.0 < results["realised_flops_reduction"] <= 0.2 + 1e-9
    assert set(results["metrics"]) == set(results["config"]["eval"]["tasks"])
    assert set(results["baseline"]["metrics"]) == set(results["metrics"])
    assert results["versions"]["torch"]
    # the kernels that ran, as transformers' modeling module resolved them: on CPU always the torch references
    assert results["kernels"] == {"mamba2_scan": "torch", "ssm_update": "torch", "causal_conv1d": "torch",
                                  "conv_update": "torch", "rms_norm": "torch"}
    assert "FLOPs" in proc.stdout and "none" in proc.stdout and "utrc" in proc.stdout


def test_rerun_with_same_config_is_skipped(smoke_run) -> None:
    out, _ = smoke_run
    before = (out / "results.json").read_text()
    proc = _run("model=tiny_mamba2", "eval=smoke", "eval.limit=4", f"hydra.run.dir={out}", cwd=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped" in proc.stdout
    assert (out / "results.json").read_text() == before


def test_generate_prints_a_continuation(tmp_path: Path, monkeypatch, capsys) -> None:
    """In-process entry point (what `python -m tor_exp` runs): the prompt and its continuation, no colour codes when
    the output is not a terminal."""
    from hydra.core.global_hydra import GlobalHydra

    import tor_exp.__main__ as entry

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["tor_exp", "task=generate", "model=tiny_mamba2", "max_new_tokens=5",
                                      "prompt=Hello", f"hydra.run.dir={tmp_path}"])
    try:
        entry.main()
    finally:
        GlobalHydra.instance().clear()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["prompt"] == "Hello"
    assert isinstance(results["continuation"], str) and len(results["continuation"]) > 0
    out = capsys.readouterr().out
    assert "Hello" + results["continuation"] in out and "\033[" not in out


def _check_default_results(out: Path, limit: int | None, model: str = "reference") -> None:
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == model and results["method"] == "utrc"
    assert results["target_flops"] == pytest.approx(0.2)
    tasks = {"reference_heldout", "reference_heldout_mc"}
    assert set(results["metrics"]) == tasks and set(results["baseline"]["metrics"]) == tasks
    assert 0.0 < results["realised_flops_reduction"] <= 0.2
    assert results["config"]["eval"]["limit"] == limit
    # the trained model: held-out bits/byte without reduction is far below a byte bigram's 3.58
    assert results["baseline"]["metrics"]["reference_heldout"]["bits_per_byte"] < 3.0
    # each difference to none comes with its paired interval, around it
    for task, metric in (("reference_heldout", "byte_perplexity"), ("reference_heldout_mc", "acc")):
        d = results["differences"][task][metric]
        size = {"reference_heldout": 96, "reference_heldout_mc": 1200}[task]
        assert d["low"] <= d["delta"] <= d["high"] and d["n"] == (min(size, limit) if limit else size)
        assert d["delta"] == pytest.approx(results["metrics"][task][metric] - results["baseline"]["metrics"][task][metric])


def test_default_job_end_to_end_on_a_few_items(tmp_path: Path) -> None:
    """`python -m tor_exp` as shipped (reference model, offline tasks, none vs UTRC 20 %), 3 items per task."""
    proc = _run("eval.limit=3", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_default_results(tmp_path, 3)


@pytest.mark.parametrize("model", ["reference_hybrid", "reference_gdn"])
def test_hybrid_reference_job_end_to_end_on_a_few_items(model: str, tmp_path: Path) -> None:
    """The trained hybrids (Mamba-2, attention and MLP blocks; Gated DeltaNet and gated attention) through the same
    default job, from another directory: the shipped weights load from the package, UTRC 20 % realises its FLOPs,
    and the unreduced model is trained."""
    proc = _run(f"model={model}", "eval.limit=3", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_default_results(tmp_path, 3, model=model)
    assert model in proc.stdout


@pytest.mark.slow
def test_default_job_end_to_end_in_full(tmp_path: Path) -> None:
    """Exactly the README's command with no arguments (86 s on one CPU thread): the unreduced reference
    model scores at least 0.6 on the 4-choice task (chance 0.25)."""
    proc = _run(f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tor_exp.config import compose_dict

    _check_default_results(tmp_path, compose_dict([])["eval"]["limit"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["baseline"]["metrics"]["reference_heldout_mc"]["acc"] >= 0.6
    assert "reference_heldout_mc" in proc.stdout and "95% CI" in proc.stdout
