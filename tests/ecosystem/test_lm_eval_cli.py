"""lm-eval's own command line through tor_exp (`python -m tor_exp.lm_eval`, console script `tor-exp-lm-eval`):
`--model tor_exp` and the bundled tasks by name from a directory that is not the checkout, with the same numbers as
the in-process backend."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import clean_env, run

TASKS = ["piqa_fixture", "lambada_fixture", "reference_heldout"]
LIMIT = 2
BATCH = 2  # the same on both sides: perplexities of ~1e11 (random tiny model) magnify fp32 batch noise


def _in_process(reduction: str) -> dict[str, dict[str, float]]:
    """The same evaluation through tor_exp's runner (the path `python -m tor_exp` takes)."""
    from tor_exp.config import compose
    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.evaluation.runner import evaluate
    from tor_exp.models import load_model, model_shape
    from tor_exp.models.schedule import build_reduction, reducing

    v = compose(["model=tiny_mamba2", f"reduction={reduction}"])
    model, tok = load_model(v.model)
    method, schedule = build_reduction(v.reduction, v.model, shape=model_shape(model))
    cfg = EvalConfig(tasks=TASKS, include_paths=["pkg://tor_exp/evaluation/tasks", "pkg://tor_exp/reference/task"],
                     limit=LIMIT, batch_size=BATCH, bootstrap_iters=0)
    with reducing(model, method, schedule, tokenizer=tok):
        return evaluate(model, tok, cfg, reduction_label=reduction)["metrics"]


def _cli_metrics(output: Path) -> dict[str, dict[str, float]]:
    (record,) = output.rglob("results_*.json")
    results = json.loads(record.read_text())["results"]
    return {task: {k.split(",")[0]: v for k, v in values.items() if isinstance(v, float) and "_stderr" not in k}
            for task, values in results.items()}


def _assert_same(cli: dict, ours: dict) -> None:
    assert set(cli) == set(TASKS)
    for task in TASKS:
        for metric, value in ours[task].items():
            if not metric.endswith("_stderr") and value is not None:
                assert cli[task][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, metric)


def _args(reduction: str, output: Path) -> list[str]:
    return ["--model", "tor_exp", "--model_args", f"model=tiny_mamba2,reduction={reduction}", "--tasks",
            ",".join(TASKS), "--limit", str(LIMIT), "--batch_size", str(BATCH),
            "--output_path", str(output)]


@pytest.mark.slow  # ~10 s; CI's slow step runs it with the subprocess variants
def test_main_from_another_directory_matches_the_in_process_backend(tmp_path, monkeypatch):
    """`tor_exp.lm_eval.main` (what the module and the console script run) in this process, with a reduction:
    the default suite's form; the subprocess form is the slow test below (and the packaging test)."""
    from tor_exp.evaluation.runner import light_env_info
    from tor_exp.lm_eval import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tor-exp-lm-eval"])
    with light_env_info():  # skips lm-eval's `pip list` environment report (~5 s), nothing it scores
        main(_args("utrc", tmp_path / "out"))
    _assert_same(_cli_metrics(tmp_path / "out"), _in_process("utrc"))


def test_bundled_tasks_are_searched_only_inside_the_cli(tmp_path):
    """The TaskManager extension is scoped: outside `main`, lm-eval is left as it was."""
    from lm_eval.tasks import TaskManager

    from tor_exp.lm_eval import bundled_tasks

    with bundled_tasks():
        inside = TaskManager(include_defaults=False, include_path=str(tmp_path))
    outside = TaskManager(include_defaults=False, include_path=str(tmp_path))
    assert {"piqa_fixture", "tor_exp_fixtures", "reference_heldout"} <= set(inside.task_index)
    assert "piqa_fixture" not in outside.task_index


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["none", "utrc"])
def test_python_m_tor_exp_lm_eval_from_another_directory(reduction, tmp_path):
    proc = run([sys.executable, "-m", "tor_exp.lm_eval", *_args(reduction, tmp_path / "out")], cwd=tmp_path,
               env=clean_env(PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert "piqa_fixture" in proc.stdout and "reference_heldout" in proc.stdout
    _assert_same(_cli_metrics(tmp_path / "out"), _in_process(reduction))
