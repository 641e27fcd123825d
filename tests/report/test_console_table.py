"""The comparison table's columns and the paper's "Avg." computed from hand-made metrics."""
import pytest

from tor_exp.reporting.console import mean_accuracy, task_columns

METRICS = {
    "lambada_fixture": {"perplexity": 12.5, "acc": 0.40},
    "hellaswag_fixture": {"acc": 0.30, "acc_norm": 0.35},
    "arc_challenge_fixture": {"acc": 0.20, "acc_norm": 0.25},
    "piqa_fixture": {"acc": 0.60, "acc_norm": 0.62},
    "reference_heldout": {"byte_perplexity": 3.2, "bits_per_byte": 1.7, "acc": 0.9},
    "reference_heldout_mc": {"acc": 0.7, "acc_norm": 0.7},
}


def test_paper_metric_per_task_and_extra_task_columns() -> None:
    cols = {(task, metric) for task, metric, _ in task_columns(METRICS)}
    assert ("hellaswag_fixture", "acc_norm") in cols and ("hellaswag_fixture", "acc") not in cols
    assert ("arc_challenge_fixture", "acc_norm") in cols
    assert ("piqa_fixture", "acc") in cols and ("piqa_fixture", "acc_norm") not in cols
    assert {("lambada_fixture", "perplexity"), ("lambada_fixture", "acc")} <= cols
    # other tasks: a perplexity if they have one (per byte first), else their accuracy
    assert ("reference_heldout", "byte_perplexity") in cols and ("reference_heldout", "acc") not in cols
    assert ("reference_heldout_mc", "acc") in cols and ("reference_heldout_mc", "acc_norm") not in cols
    lambada = {(t, m) for t, m, _ in task_columns({"lambada_fixture": {"perplexity": 1e6, "byte_perplexity": 3.0,
                                                                          "acc": 0.1}})}
    assert lambada == {("lambada_fixture", "byte_perplexity"), ("lambada_fixture", "acc")}


def test_average_is_over_the_paper_tasks_only() -> None:
    # lambada acc, hellaswag acc_norm, arc_c acc_norm, piqa acc; reference_heldout is not a paper task
    assert mean_accuracy(METRICS) == pytest.approx((0.40 + 0.35 + 0.25 + 0.60) / 4)
    assert mean_accuracy({"reference_heldout": {"byte_perplexity": 3.2, "acc": 0.0},
                          "reference_heldout_mc": {"acc": 0.7}}) == pytest.approx(0.7)
    assert mean_accuracy({}) is None
