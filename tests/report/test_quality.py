"""The quality document: paired differences computed from a real (tiny) sweep's logged samples, checked against a
direct computation from the same per-document records."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tor_exp.reporting.intervals import paired_difference


def test_paired_difference_of_means_is_exact_and_its_interval_covers_it():
    a = {i: float(i % 2) for i in range(40)}
    b = {i: float(i % 2 or i % 5 == 0) for i in range(40)}  # b = a plus 4 more correct documents
    d = paired_difference(a, b, lambda xs: sum(xs) / len(xs), iters=500, seed=1)
    assert d.delta == pytest.approx(4 / 40) and d.n == 40
    assert d.low <= d.delta <= d.high and d.low >= 0.0  # b never loses a document: no resample goes below 0
    same = paired_difference(a, dict(a), lambda xs: sum(xs) / len(xs), iters=200)
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)
    assert paired_difference({1: 1.0}, {2: 1.0}, sum) is None  # no shared documents


@pytest.mark.parametrize("name", ["mean", "perplexity", "weighted_perplexity", "bits_per_byte"])
def test_the_fast_bootstrap_statistic_is_lm_evals_aggregation_on_every_resample(name):
    """The resamples of lm-eval's common aggregations are computed on arrays; each must equal lm-eval's own function
    applied to that resample's documents."""
    import numpy as np

    from tor_exp.reporting.intervals import _vectorised, aggregation

    rng = np.random.default_rng(0)
    if name.startswith(("weighted", "bits")):
        values = [(float(-rng.uniform(1, 90)), int(rng.integers(5, 60))) for _ in range(30)]
    else:
        values = [float(-rng.uniform(0, 3)) for _ in range(30)]
    idx = rng.integers(0, 30, size=(50, 30))
    fast = _vectorised(aggregation(name))(np.asarray(values, dtype=np.float64)[idx])
    slow = [aggregation(name)([values[i] for i in row]) for row in idx.tolist()]
    assert fast == pytest.approx(slow, rel=1e-12)


def test_a_jobs_intervals_depend_on_its_outputs_not_on_its_seed(tmp_path):
    """``seed`` seeds the model's run; the tiny model's outputs do not depend on it, so neither may the paired
    intervals (they flipped their ``*`` between seeds before); they draw ``eval.bootstrap_iters`` resamples."""
    from tor_exp.config import compose_dict
    from tor_exp.run import run

    base = ["model=tiny_mamba2", "eval=smoke", "eval.limit=3", "device=cpu", "eval.bootstrap_iters=300"]
    jobs = [run(compose_dict(base + [f"seed={seed}"]), out_dir=tmp_path / str(seed)) for seed in (0, 1)]
    assert jobs[0]["metrics"] == jobs[1]["metrics"]
    assert jobs[0]["differences"] == jobs[1]["differences"]
    diffs = [d for per_task in jobs[0]["differences"].values() for d in per_task.values()]
    assert diffs and all(d["iters"] == 300 for d in diffs)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """none, utrc@20 % and evit@20 % on the tiny model, through the normal job with samples logged."""
    from tor_exp.config import compose_dict
    from tor_exp.run import run

    root = tmp_path_factory.mktemp("quality")
    base = ["model=tiny_mamba2", "eval=reference", "eval.limit=6", "eval.log_samples=true",
            "eval.compare_baseline=false", "device=cpu", "eval.bootstrap_iters=0"]
    for name, extra in (("none", ["reduction=none"]), ("utrc", ["reduction=utrc", "reduction.target_flops=0.2"]),
                        ("evit", ["reduction=evit", "reduction.target_flops=0.2"])):
        run(compose_dict(base + extra), out_dir=root / name)
    return root


def test_quality_rows_equal_a_direct_computation(tiny_sweep):
    from tor_exp.reporting.collect import load_sweep
    from tor_exp.reporting.quality import quality_rows

    records = load_sweep(tiny_sweep)
    rows = {r["method"]: r for r in quality_rows(records, iters=200)}
    key = "reference_heldout/byte_perplexity"

    def ppl_per_byte(method):
        lines = (tiny_sweep / method / "samples" / method / "reference_heldout.jsonl").read_text().splitlines()
        pairs = [json.loads(line)["byte_perplexity"] for line in lines]
        return math.exp(-sum(ll for ll, _ in pairs) / sum(n for _, n in pairs))

    for method in ("utrc", "evit"):
        assert rows[method]["vs_none"][key]["delta"] == pytest.approx(ppl_per_byte(method) - ppl_per_byte("none"))
        assert rows[method]["values"][key] == pytest.approx(ppl_per_byte(method))
    assert rows["evit"]["vs_utrc"][key]["delta"] == pytest.approx(ppl_per_byte("evit") - ppl_per_byte("utrc"))
    assert rows["none"]["vs_none"] == {}


def test_report_writes_the_quality_document(tiny_sweep, tmp_path):
    from tor_exp.report import main

    assert main([str(tiny_sweep), "--quality", str(tmp_path / "q"), "--iters", "100"]) == 0
    text = (tmp_path / "q.md").read_text()
    assert "## reference_heldout: byte_perplexity" in text and "| evit | 20 % |" in text
    # provenance: the model, the documents every job scored (eval.limit=6), the machine
    assert "model `tiny_mamba2`" in text and "reference_heldout 6" in text and "reference_heldout_mc 6" in text
    assert "3 jobs" in text and "float32 on cpu" in text
    assert (tmp_path / "q.png").stat().st_size > 1000
    assert json.loads((tmp_path / "q.json").read_text())["iters"] == 100


def test_offset_counts_come_from_the_record_and_only_for_offset_alignment():
    from tor_exp.reporting.quality import offset_counts

    record = {"alignment": {"mode": "offset", "t": {"offset_short": 2, "offset_empty": 1, "offset_misaligned": 5}},
              "num_requests": {"t": 40}}
    assert offset_counts(record) == {"t": {"misaligned": 5, "short": 2, "requests": 40}}
    assert offset_counts({"alignment": {"mode": "exact"}, "num_requests": {"t": 40}}) == {}
    assert offset_counts({}) == {}


def test_two_models_get_a_section_each_and_an_agreement_table(tiny_sweep, tmp_path):
    """A sweep over two architectures (here the tiny Mamba-2 and the tiny Nemotron-H): one section and plot per model,
    then per method and target whether they agree."""
    import shutil

    from tor_exp.config import compose_dict
    from tor_exp.report import main
    from tor_exp.reporting.quality import agreement
    from tor_exp.run import run

    both = tmp_path / "both"
    shutil.copytree(tiny_sweep, both / "tiny_mamba2")
    base = ["model=tiny_nemotron_h", "eval=reference", "eval.limit=6", "eval.log_samples=true",
            "eval.compare_baseline=false", "device=cpu", "eval.bootstrap_iters=0"]
    for name, extra in (("none", ["reduction=none"]), ("utrc", ["reduction=utrc", "reduction.target_flops=0.2"]),
                        ("evit", ["reduction=evit", "reduction.target_flops=0.2"])):
        run(compose_dict(base + extra), out_dir=both / "tiny_nemotron_h" / name)
    assert main([str(both), "--quality", str(tmp_path / "q"), "--iters", "100"]) == 0
    text = (tmp_path / "q.md").read_text()
    assert "## Model `tiny_mamba2`" in text and "## Model `tiny_nemotron_h`" in text
    assert "## Do the two architectures agree?" in text and "| evit | 20 % |" in text
    assert (tmp_path / "q.png").is_file() and (tmp_path / "q.tiny_nemotron_h.png").is_file()
    assert set(json.loads((tmp_path / "q.json").read_text())["models"]) == {"tiny_mamba2", "tiny_nemotron_h"}
    resolved_up, resolved_down = {"low": 0.1, "high": 0.3}, {"low": -0.3, "high": -0.1}
    unresolved = {"low": -0.1, "high": 0.1}
    assert agreement(resolved_up, resolved_up) == "agree"
    assert agreement(unresolved, unresolved) == "agree (neither resolved)"
    assert agreement(resolved_up, unresolved) == "only first resolved"
    assert agreement(resolved_up, resolved_down) == "**disagree**"


def test_quality_uses_each_records_own_baseline_when_there_is_no_none_job(tmp_path):
    """The default job (eval.compare_baseline=true) holds its own `none` baseline and its samples: `--quality` on
    such runs compares with that baseline, and its intervals are the ones the job itself computed (same documents,
    same resample seed and count)."""
    from tor_exp.config import compose_dict
    from tor_exp.report import main
    from tor_exp.run import run

    job = run(compose_dict(["model=tiny_mamba2", "eval=reference", "eval.limit=5", "eval.log_samples=true",
                            "device=cpu", "eval.bootstrap_iters=200", "reduction.target_flops=0.2"]),
              out_dir=tmp_path / "sw" / "utrc")
    assert main([str(tmp_path / "sw"), "--quality", str(tmp_path / "q"), "--iters", "200"]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "q.json").read_text())["rows"]}
    assert set(rows) == {"none", "utrc"}
    for task, per_metric in job["differences"].items():
        for metric, own in per_metric.items():
            key = f"{task}/{metric}"
            if key not in rows["utrc"]["vs_none"]:
                continue
            got = rows["utrc"]["vs_none"][key]
            assert (got["delta"], got["low"], got["high"]) == pytest.approx((own["delta"], own["low"], own["high"]),
                                                                           abs=1e-9)
            assert rows["none"]["values"][key] == pytest.approx(job["baseline"]["metrics"][task][metric])
    assert rows["utrc"]["vs_none"]  # at least one compared metric
