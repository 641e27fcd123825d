"""Reading a W&B group: each run's summary through the public ``Run.summary_metrics`` (no private attribute)."""
from __future__ import annotations

from types import SimpleNamespace

import wandb
from wandb.apis.public.runs import Run

from tor_exp.reporting.collect import load_wandb_group, results_from_wandb


def test_wandb_run_has_summary_metrics():
    """Fails loudly on a wandb upgrade that drops the property load_wandb_group reads (written against 0.31.0)."""
    assert isinstance(vars(Run).get("summary_metrics"), property), \
        f"wandb {wandb.__version__}: Run.summary_metrics is gone: update tor_exp/reporting/collect.py"


def test_group_runs_read_from_summary_metrics(monkeypatch):
    config = {"task": "eval", "model": {"name": "tiny_mamba2"}, "reduction": {"method": "utrc", "target_flops": 0.2}}
    summary = {"metrics/lambada_fixture/acc": 0.25, "realised_flops_reduction": 0.19, "keep_ratio": 0.9}
    runs = [SimpleNamespace(state="finished", config=config, summary_metrics=summary, name="a", url="u/a"),
            SimpleNamespace(state="running", config=config, summary_metrics={}, name="b", url="u/b")]
    asked = []

    class Api:
        def runs(self, path, filters):
            asked.append((path, filters))
            return runs

    monkeypatch.setattr(wandb, "Api", Api)
    got = load_wandb_group("g1", entity="me", project="p")
    assert asked == [("me/p", {"group": "g1"})]
    assert got == [results_from_wandb(config, summary, name="a", url="u/a")]  # the running one is left out
    assert got[0]["metrics"] == {"lambada_fixture": {"acc": 0.25}} and got[0]["realised_flops_reduction"] == 0.19
