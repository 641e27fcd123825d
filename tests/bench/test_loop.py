"""The one loop every preset runs: shapes in grid order with seeded prompts, warm-up then round-robin timed calls,
min / median per named interval and the last output kept."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tor_exp.bench.config import BenchConfig
from tor_exp.bench.loop import Sample, round_robin, shapes
from tor_exp.bench.variants import Variant
from tor_exp.models import ModelConfig, TinyModelConfig, load_model

NO_CALIBRATION = SimpleNamespace(calibration_text=None)  # a model config as `applied` reads it


@pytest.mark.parametrize("interleave", [True, False])
def test_round_robin_warms_up_then_times_in_order(interleave):
    variants = [Variant(name, "none", 0.0) for name in ("a", "b", "c")]  # no method: nothing is patched
    calls: list[tuple[str, int]] = []
    clock = iter(range(100))

    def step(i: int) -> Sample:
        calls.append(("step", i))
        t = float(next(clock))
        return Sample({"x": t, "y": 2 * t}, out=(i, t))

    cfg = BenchConfig(warmup=2, repeats=3, interleave=interleave)
    measured = round_robin(None, variants, step, tokenizer=None, model_cfg=NO_CALIBRATION, cfg=cfg,
                           warm=lambda i: calls.append(("warm", i)))
    assert calls[:6] == [("warm", 0), ("warm", 0), ("warm", 1), ("warm", 1), ("warm", 2), ("warm", 2)]
    order = [i for kind, i in calls[6:]]
    assert order == ([0, 1, 2] * 3 if interleave else [0, 0, 0, 1, 1, 1, 2, 2, 2])
    for i, m in enumerate(measured):
        times = [float(k) for k, j in enumerate(order) if j == i]  # the clock value of each of its calls
        assert m.times("x") == times and m.times("y") == [2 * t for t in times]
        assert m.timing("x") == {"x_min_s": min(times), "x_median_s": sorted(times)[1]}
        assert m.timing("y", "p_") == {"p_min_s": 2 * min(times), "p_median_s": 2 * sorted(times)[1]}
        assert m.last == (i, times[-1])


def test_round_robin_warm_up_defaults_to_the_step():
    seen = []
    round_robin(None, [Variant("none", "none", 0.0)], lambda i: seen.append(i) or Sample(), tokenizer=None,
                model_cfg=NO_CALIBRATION, cfg=BenchConfig(warmup=1, repeats=2))
    assert seen == [0, 0, 0]


def test_shapes_grid_order_and_seeded_prompts():
    cfg = ModelConfig(name="t", family="mamba2", n_layer=2, locations=[0],
                      tiny=TinyModelConfig(d_model=32, n_layer=2, chunk_size=16, head_dim=16, state_size=8))
    model, _ = load_model(cfg)
    bench = BenchConfig(batch_sizes=[1, 3], seq_lens=[5, 8], seed=7)
    first = list(shapes(model, bench, torch.device("cpu")))
    again = list(shapes(model, bench, torch.device("cpu")))
    assert [(s.batch, s.seq_len) for s in first] == [(1, 5), (1, 8), (3, 5), (3, 8)]
    for a, b in zip(first, again):
        assert a.ids.shape == (a.batch, a.seq_len) and torch.equal(a.ids, b.ids)
        assert int(a.ids.min()) >= 0 and int(a.ids.max()) < model.config.vocab_size
    other = list(shapes(model, BenchConfig(batch_sizes=[1], seq_lens=[5], seed=8), torch.device("cpu")))
    assert not torch.equal(other[0].ids, first[0].ids)
