"""``reduction=none`` means no reduction through every entry point; lm-eval's own ``simple_evaluate`` with our
backend built by name agrees with lm-eval's HFLM per request on all six fixture tasks."""
from __future__ import annotations

import pytest

from tor_exp.evaluation.config import FIXTURE_TASKS

LIMIT = 2


def _simple_evaluate(model, model_args=None, **kw):
    import lm_eval

    from tor_exp.evaluation.runner import light_env_info, task_manager

    tm = task_manager(["pkg://tor_exp/evaluation/tasks"], list(FIXTURE_TASKS))
    with light_env_info():
        return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(FIXTURE_TASKS), limit=LIMIT,
                                       task_manager=tm, log_samples=True, bootstrap_iters=0, **kw)


def _per_request(raw) -> dict[tuple[str, int, int], float]:
    """(task, doc, request index) → log-likelihood, from lm-eval's logged samples."""
    out = {}
    for task, samples in raw["samples"].items():
        for sample in samples:
            for i, resp in enumerate(sample["resps"]):
                out[(task, sample["doc_id"], i)] = float(resp[0][0])
    return out


@pytest.mark.parametrize("spelling", ["none", "None", "null"])
def test_reduction_none_through_simple_evaluate_matches_hflm(spelling, monkeypatch, tmp_path):
    """lm-eval parses ``none``/``None`` to None: that must mean "no reduction", never the default UTRC."""
    import tor_exp.lm_eval  # noqa: F401  (registers the name "tor_exp")
    from lm_eval.models.huggingface import HFLM

    from tor_exp.config import compose
    from tor_exp.models import load_model

    monkeypatch.chdir(tmp_path)
    ours = _simple_evaluate("tor_exp", f"model=tiny_mamba2,reduction={spelling}", batch_size=4)
    model, tok = load_model(compose(["model=tiny_mamba2"]).model)
    ref = _simple_evaluate(HFLM(pretrained=model, tokenizer=tok, batch_size=4))
    a, b = _per_request(ours), _per_request(ref)
    assert set(a) == set(b) and len(a) > 6 * LIMIT
    assert {task for task, _, _ in a} == set(FIXTURE_TASKS)
    assert max(abs(a[k] - b[k]) for k in a) <= 1e-4


def test_absent_reduction_is_the_cli_default_and_the_dict_form_none_is_none():
    from tor_exp.lm_eval import _ABSENT, model_overrides

    assert model_overrides("reference", _ABSENT, {}) == ["model=reference"]  # as `python -m tor_exp model=...`
    assert model_overrides("reference", None, {"reduction.q": None}) == ["model=reference", "reduction=none",
                                                                        "reduction.q=null"]


@pytest.mark.parametrize("model", ["tiny_mamba2", "tiny_nemotron_h"])
def test_python_api_cli_and_lm_eval_agree_on_a_reduced_run(model, tmp_path, monkeypatch):
    """The same UTRC config through run() (the CLI's job) and through simple_evaluate(model="tor_exp") gives the
    same metrics, for the paper's Mamba-2 and for a hybrid."""
    import tor_exp.lm_eval  # noqa: F401
    from tor_exp.config import compose_dict
    from tor_exp.run import run

    monkeypatch.chdir(tmp_path)
    overrides = [f"model={model}", "reduction=utrc", "reduction.keep_ratio=0.6", "eval=fixtures",
                 f"eval.limit={LIMIT}", "eval.batch_size=4", "eval.compare_baseline=false", "device=cpu"]
    job = run(compose_dict(overrides), out_dir=tmp_path / "job")
    raw = _simple_evaluate("tor_exp", f"model={model},reduction=utrc,reduction.keep_ratio=0.6", batch_size=4)
    for task in FIXTURE_TASKS:
        for key, value in raw["results"][task].items():
            metric = key.split(",")[0]
            if isinstance(value, float) and not metric.endswith("_stderr") and metric in job["metrics"][task]:
                assert job["metrics"][task][metric] == pytest.approx(value, rel=1e-6), (task, metric)
