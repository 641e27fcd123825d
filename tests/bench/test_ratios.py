"""Ratio arithmetic on hand-computed numbers, and the row-level ratio passes on synthetic rows."""
import math

import pytest

from tor_exp.bench import ratios
from tor_exp.bench.presets import add_generate_ratios, add_memory_ratios, add_prefill_ratios
from tor_exp.bench.runner import summarise
from tor_exp.bench.timing import TimingStats, time_call
from tor_exp.errors import ConfigError


def test_ideal_prefill_speedup_hand_values():
    assert ratios.ideal_prefill_speedup(0.0) == 1.0
    assert ratios.ideal_prefill_speedup(0.2) == pytest.approx(1.25)
    assert ratios.ideal_prefill_speedup(0.5) == pytest.approx(2.0)
    assert ratios.ideal_prefill_speedup(0.3) == pytest.approx(1 / 0.7)
    with pytest.raises(ConfigError, match="f=1.0"):
        ratios.ideal_prefill_speedup(1.0)
    with pytest.raises(ConfigError):
        ratios.ideal_prefill_speedup(-0.1)


def test_ideal_end_to_end_hand_values():
    # P=2 s, D=3 s, f=0.5: (2+3)/(2*0.5+3) = 5/4
    assert ratios.ideal_end_to_end_speedup(2.0, 3.0, 0.5) == pytest.approx(1.25)
    # no decode: reduces to the prefill ideal
    assert ratios.ideal_end_to_end_speedup(1.0, 0.0, 0.3) == pytest.approx(1 / 0.7)
    # decode dominates: 10 / 9.9
    assert ratios.ideal_end_to_end_speedup(1.0, 9.0, 0.1) == pytest.approx(10 / 9.9)
    # no prefill: nothing to gain
    assert ratios.ideal_end_to_end_speedup(0.0, 4.0, 0.3) == pytest.approx(1.0)
    # the paper's numbers: a prefill share s of end-to-end time gives 1/(1 - s f)
    assert ratios.ideal_end_to_end_speedup(0.6, 0.4, 0.3) == pytest.approx(1 / (1 - 0.6 * 0.3))
    with pytest.raises(ConfigError):
        ratios.ideal_end_to_end_speedup(0.0, 0.0, 0.1)


def test_simple_ratios():
    assert ratios.speedup(3.0, 2.0) == pytest.approx(1.5)
    assert ratios.fraction_of_ideal(1.2, 1.25) == pytest.approx(0.96)
    assert ratios.tokens_per_second(16, 100, 4.0) == pytest.approx(400.0)
    assert ratios.overhead_share(0.01, 0.5) == pytest.approx(0.02)
    assert ratios.overhead_share(0.01, 0.0) is None
    with pytest.raises(ConfigError):
        ratios.speedup(0.0, 1.0)


def _row(variant, f, t, real=None, **extra):
    return {"batch": 2, "seq_len": 8, "variant": variant, "target_flops": f, "realised_backbone": real,
            "prefill_min_s": t, "prefill_median_s": 2 * t, **extra}


def test_prefill_row_ratios():
    rows = [_row("none", 0.0, 2.0, 0.0), _row("m@20%", 0.2, 1.6, 0.25)]
    add_prefill_ratios(rows)
    r = rows[1]
    assert r["speedup"] == pytest.approx(2.0 / 1.6)                  # 1.25
    assert r["speedup_median"] == pytest.approx(4.0 / 3.2)
    assert r["ideal_speedup"] == pytest.approx(1 / 0.75)             # realised f
    assert r["ideal_speedup_target"] == pytest.approx(1.25)          # target f
    assert r["of_ideal"] == pytest.approx(1.25 * 0.75)
    assert r["of_ideal_target"] == pytest.approx(1.0)
    assert rows[0]["speedup"] == 1.0 and rows[0]["of_ideal"] == 1.0


def test_generate_row_ratios():
    base = {"batch": 16, "seq_len": 2048, "variant": "none", "target_flops": 0.0, "realised_backbone": 0.0,
            "prefill_min_s": 2.0, "decode_min_s": 3.0, "total_min_s": 5.0}
    red = {"batch": 16, "seq_len": 2048, "variant": "m@40%", "target_flops": 0.4, "realised_backbone": 0.4,
           "prefill_min_s": 1.25, "decode_min_s": 3.0, "total_min_s": 4.25}
    rows = [base, red]
    add_generate_ratios(rows)
    assert red["throughput_gain"] == pytest.approx(5.0 / 4.25)
    assert red["ideal_gain"] == pytest.approx(5.0 / (2.0 * 0.6 + 3.0))   # 5/4.2
    assert red["of_ideal"] == pytest.approx((5.0 / 4.25) / (5.0 / 4.2))
    assert red["prefill_speedup"] == pytest.approx(1.6)
    assert red["ideal_prefill_speedup"] == pytest.approx(1 / 0.6)


def test_memory_row_ratios_and_nulls():
    rows = [{"batch": 1, "seq_len": 4, "logits": "all", "variant": "none", "peak_allocated_bytes": 1000,
             "nvml_peak_bytes": None, "logits_bytes": 400, "peak_above_weights_bytes": 600},
            {"batch": 1, "seq_len": 4, "logits": "all", "variant": "m@10%", "peak_allocated_bytes": 900,
             "nvml_peak_bytes": None, "logits_bytes": 300, "peak_above_weights_bytes": 500}]
    add_memory_ratios(rows)
    assert rows[1]["peak_allocated_saving"] == pytest.approx(0.1)
    assert rows[1]["logits_saving"] == pytest.approx(0.25)
    assert rows[1]["peak_above_weights_saving"] == pytest.approx(1 / 6)
    assert "nvml_peak_saving" not in rows[1]


def test_summary_keys_are_flat_floats():
    rows = [_row("none", 0.0, 2.0, 0.0), _row("m@20%", 0.2, 1.6, 0.2)]
    add_prefill_ratios(rows)
    summary = summarise("prefill", rows)
    assert summary["prefill.b2n8.f20.speedup"] == pytest.approx(1.25)
    assert summary["prefill.f20.of_ideal"] == pytest.approx(1.0)
    assert all(isinstance(v, float) and math.isfinite(v) for v in summary.values())


def test_timing_stats_and_call_counts():
    stats = TimingStats([0.3, 0.1, 0.2, 0.5])
    assert stats.min_s == 0.1 and stats.median_s == pytest.approx(0.25)
    calls = []
    stats, result = time_call(lambda: calls.append(1) or len(calls), "cpu", warmup=2, repeats=3)
    assert len(calls) == 5 and result == 5 and len(stats.times_s) == 3
    assert all(t >= 0 for t in stats.times_s)


def test_run_order_interleaves_variants():
    from tor_exp.bench.loop import run_order

    assert run_order(3, 2) == [0, 1, 2, 0, 1, 2]
    assert run_order(3, 2, interleave=False) == [0, 0, 1, 1, 2, 2]
    assert sorted(run_order(4, 5)) == sorted(run_order(4, 5, interleave=False))
