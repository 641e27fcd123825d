"""The backend-vs-HFLM benchmark (``python launchers/lm_overhead.py``) runs and its two LMs score alike."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "launchers" / "lm_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lm_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_benchmark_runs_on_four_items_and_the_two_lms_agree(bench):
    """4 items of reference_heldout_mc (16 requests) on the shipped hybrid: both LMs timed once, every request's
    log-likelihood within 1e-4 nats (the benchmark's own check)."""
    from tor_exp.evaluation.runner import task_manager

    tm = task_manager([bench.TASK_FOLDER], [bench.TASK])
    result = bench.compare("reference_hybrid", limit=4, batch_size=8, repeats=1, tm=tm)
    assert result.requests == 16  # 4 items x 4 choices
    assert result.max_abs_diff <= 1e-4
    assert len(result.ours.eval_s) == len(result.hflm.eval_s) == 1
    assert 0 < result.ours.model_s[0] <= result.ours.eval_s[0]
    assert 0 < result.hflm.model_s[0] <= result.hflm.eval_s[0]


@pytest.mark.parametrize("argv", [["--limit", "0"], ["--repeats", "0"], ["--models", "no_such_model"]])
def test_bad_input_is_one_error_line(bench, argv, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
