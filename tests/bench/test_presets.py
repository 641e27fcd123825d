"""Every conf/bench preset composes with Hydra into a valid BenchConfig of its own kind, and the paper-scale
overrides named in its comments are accepted."""
import pytest
from tor_exp.bench.config import BENCH_KINDS
from tor_exp.errors import ConfigError

PAPER = {
    "prefill": ["bench.batch_sizes=[16]", "bench.seq_lens=[2048]", "bench.warmup=2", "bench.repeats=5"],
    "overhead": ["bench.batch_sizes=[16]", "bench.seq_lens=[2048]", "bench.warmup=2", "bench.repeats=5"],
    "generate": ["bench.batch_sizes=[16]", "bench.seq_lens=[2048]", "bench.new_tokens=100"],
    "memory": ["bench.batch_sizes=[96]", "bench.seq_lens=[2048]"],
}


@pytest.mark.parametrize("preset", BENCH_KINDS)
def test_preset_composes(preset, compose):
    v = compose("task=bench", f"bench={preset}", "model=tiny_mamba2")
    assert v.bench.kind == preset
    assert v.bench.flops_targets == [0.1, 0.2, 0.3]
    big = compose("task=bench", f"bench={preset}", "model=tiny_mamba2", *PAPER[preset])
    assert big.bench.seq_lens == [2048] and big.bench.batch_sizes[0] in (16, 96)


def test_bad_preset_value_names_the_key(compose):
    with pytest.raises(ConfigError, match="bench.seq_lens"):
        compose("task=bench", "bench=prefill", "model=tiny_mamba2", "bench.seq_lens=[0]")
