"""The runner: fixture tasks through lm-eval's simple_evaluate, offline, from any cwd; lm-eval's own entry."""
from __future__ import annotations

import os

import socket

import pytest

from tor_exp.errors import ConfigError
from tor_exp.evaluation.config import FIXTURE_TASKS, EvalConfig
from tor_exp.evaluation.runner import evaluate, task_manager

LIMIT = 3


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _expected_requests(task: str) -> int:
    """Requests lm-eval makes for the first LIMIT docs: one per choice (lambada: one per doc)."""
    import json
    from pathlib import Path

    import tor_exp.evaluation as pkg

    rows = [json.loads(x) for x in (Path(pkg.__file__).parent / "tasks" / f"{task}.jsonl").read_text().splitlines()]
    rows = rows[:LIMIT]
    if task == "lambada_fixture":
        return len(rows)
    if task.startswith("arc_"):
        return sum(len(r["choices"]["text"]) for r in rows)
    if task == "hellaswag_fixture":
        return 4 * len(rows)
    return 2 * len(rows)


def test_fixture_suite_runs_offline_from_any_cwd(patched, tmp_path, monkeypatch, no_network):
    model, tok = patched
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    cfg = EvalConfig(limit=LIMIT, batch_size=8)
    out = evaluate(model, tok, cfg, reduction_label="utrc")
    # lm-eval's bootstrap Pool deadlocks under submitit (workers ignore SIGTERM): every run bootstraps in-process
    assert os.environ["DISABLE_MULTIPROC"] == "1"
    assert sorted(out["metrics"]) == sorted(FIXTURE_TASKS)
    for task, metrics in out["metrics"].items():
        assert 0.0 <= metrics["acc"] <= 1.0 and "acc_stderr" in metrics
        if task not in ("lambada_fixture", "winogrande_fixture"):
            assert 0.0 <= metrics["acc_norm"] <= 1.0 and "acc_norm_stderr" in metrics
    assert out["metrics"]["lambada_fixture"]["perplexity"] > 1.0
    assert "acc_norm" not in out["metrics"]["winogrande_fixture"]
    assert out["num_requests"] == {t: _expected_requests(t) for t in FIXTURE_TASKS}
    assert out["n_samples"] == {t: LIMIT for t in FIXTURE_TASKS}
    # realised reduction: positive, below what the schedule removes from long inputs (scored tokens protected)
    for task in FIXTURE_TASKS:
        assert 0.0 < out["flops"][task] < 0.75
        assert out["flops_detail"][task]["target"] == 0.3
        assert out["flops_detail"][task]["realised"] == out["flops"][task]
    assert out["alignment"]["mode"] == "exact"
    assert all(out["alignment"][t] == {"offset_short": 0, "offset_empty": 0, "offset_misaligned": 0}
               for t in FIXTURE_TASKS)


def test_unreduced_and_offset_runs(tiny, patched, tmp_path, monkeypatch, no_network):
    model, tok = patched
    monkeypatch.chdir(tmp_path)
    out = evaluate(model, tok, EvalConfig(tasks=["piqa_fixture"], limit=LIMIT, alignment="offset"),
                   reduction_label="utrc")
    # a quarter of the tokens survive: piqa's long answers no longer fit behind the shortened context
    counts = out["alignment"]["piqa_fixture"]
    assert counts["offset_short"] > 0 and counts["offset_empty"] == 0
    assert counts["offset_short"] + counts["offset_misaligned"] == out["num_requests"]["piqa_fixture"]
    assert out["alignment"]["mode"] == "offset"
    from tor_exp.models import unpatch

    unpatch(model)
    base = evaluate(model, tok, EvalConfig(tasks=["piqa_fixture"], limit=2), reduction_label="none")
    assert base["flops"] == {"piqa_fixture": 0.0}
    assert base["flops_detail"]["piqa_fixture"]["target"] is None


def test_task_manager_knows_the_tag_and_rejects_unknown_names(monkeypatch):
    import lm_eval.tasks

    tm = task_manager(["pkg://tor_exp/evaluation/tasks"], ["tor_exp_fixtures", "piqa_fixture"])
    assert set(FIXTURE_TASKS) <= set(tm.task_index)

    class WithoutBuiltins(lm_eval.tasks.TaskManager):  # lm-eval's own index takes 12-15 s to build; not needed here
        def __init__(self, include_path=None, include_defaults=True, **kwargs):
            super().__init__(include_path=include_path, include_defaults=False, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", WithoutBuiltins)
    with pytest.raises(ConfigError, match="eval.tasks"):
        task_manager(["pkg://tor_exp/evaluation/tasks"], ["no_such_task"])


@pytest.mark.parametrize("model_args", [
    # lm-eval's string form (the CLI's --model_args): the 16-layer tiny model with its default locations
    "model=tiny_mamba2,reduction=evit,reduction.keep_ratio=0.5",
    # dict form: any override, lists included
    {"model": "tiny_mamba2", "reduction": "utrc", "model.n_layer": 4, "model.tiny.n_layer": 4,
     "model.locations": "[0,1]", "reduction.target_flops": 0.3},
])
def test_lm_eval_entry_point_builds_model_from_config_names(model_args, tmp_path, monkeypatch, no_network):
    """simple_evaluate(model="tor_exp", model_args=...) composes the project config and patches the model."""
    import lm_eval
    from lm_eval.api.registry import get_model

    import tor_exp.lm_eval  # noqa: F401  (importing it registers "tor_exp" with lm-eval)
    from tor_exp.evaluation.runner import light_env_info
    from tor_exp.models.patching import get_patch

    monkeypatch.chdir(tmp_path)
    tm = task_manager(["pkg://tor_exp/evaluation/tasks"], ["winogrande_fixture"])
    built = []
    cls = get_model("tor_exp")
    original_init = cls.__init__

    def spy(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(cls, "__init__", spy)
    with light_env_info():
        raw = lm_eval.simple_evaluate(model="tor_exp", model_args=model_args, tasks=["winogrande_fixture"], limit=2,
                                      task_manager=tm, batch_size=4, bootstrap_iters=0)
    assert 0.0 <= raw["results"]["winogrande_fixture"]["acc,none"] <= 1.0
    (lm,) = built
    info = get_patch(lm.model)
    assert info is not None and info.method.name in ("evit", "utrc")
    if isinstance(model_args, dict):
        assert info.schedule.locations == [0, 1] and lm.layers == 4 and info.schedule.target_flops == 0.3
    else:
        assert info.schedule.keep_ratio == 0.5 and lm.layers == 16
    assert lm.stats_dict()["winogrande_fixture"]["realised_reduction"] > 0.0


def test_model_args_reject_unknown_keys():
    from tor_exp.lm_eval import TorExpByName

    with pytest.raises(ConfigError, match="model_args"):
        TorExpByName.create_from_arg_string("model=tiny_mamba2,colour=blue")
