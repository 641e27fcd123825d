"""Analytic FLOPs vs FlopCounterMode, the ρ solver's reference values, schedules and realised reductions."""
from __future__ import annotations

import pytest
import torch
from flop_count import counting_flops

from tor_exp.errors import ConfigError
from tor_exp.reduction.base import ReductionConfig
from tor_exp.models.config import ModelConfig
from tor_exp.models.families import model_shape
from tor_exp.models.shape import Mamba1, ModelShape
from tor_exp.models.flops import (
    flops_reduction,
    head_flop_terms,
    layer_flops,
    model_flops,
    realised_flops_reduction,
)
from tor_exp.models.loading import shape_from_model_config
from tor_exp.models.schedule import Schedule, build_schedule, solve_keep_ratio
from tor_exp.models.patching import reduced_forward

from _tiny_methods import KeepFirst
from conftest import LOCATIONS, random_ids, tiny_cfg

PAPER_64 = list(range(12, 43, 5))
PAPER_48 = list(range(10, 36, 5))


@pytest.mark.parametrize("length", [16, 37])
@torch.no_grad()
def test_analytic_matches_flop_counter(model, length):
    """FlopCounterMode counts matmul/conv-like ops only: compare the matmul terms (HF reference SSD form)."""
    shape = model_shape(model)
    with counting_flops(model) as counter:
        model(random_ids(1, length), use_cache=False)
    analytic = model_flops(shape, [length] * shape.n_layer, n_logits=length, matmul_only=True, reference=True)
    assert analytic == pytest.approx(counter.get_total_flops(), rel=0.02)
    # and per module, for the projections that are exact
    counts = counter.get_flop_counts()
    prefix = f"{type(model).__name__}.backbone.layers.0.mixer"
    d, e = shape.d_model, shape.parts(0)[0].d_inner
    assert sum(counts[f"{prefix}.out_proj"].values()) == 2 * length * e * d
    assert sum(counts[f"{type(model).__name__}.lm_head"].values()) == 2 * length * d * shape.vocab_size


def test_ideal_mamba2_cost_is_linear_and_reference_pads_chunks():
    shape = shape_from_model_config(tiny_cfg("mamba2"))
    assert layer_flops(shape, 40) == pytest.approx(2 * layer_flops(shape, 20))
    # the reference form computes whole chunks: 17 tokens cost as much SSD work as 32 in the intra terms
    assert layer_flops(shape, 17, reference=True) > layer_flops(shape, 17)


@pytest.mark.parametrize("target,rho64,rho48", [(0.1, 0.9729, 0.9651), (0.2, 0.9415, 0.9248), (0.3, 0.9043, 0.8768)])
def test_solver_reference_values(target, rho64, rho48):
    assert solve_keep_ratio(64, PAPER_64, target) == pytest.approx(rho64, abs=5e-5)
    assert solve_keep_ratio(48, PAPER_48, target) == pytest.approx(rho48, abs=5e-5)


def test_backbone_reduction_hand_computed():
    # 64 layers, reduce after 12,17,...,42: 13 layers see N, then 5 per location, 21 see rho^7 N.
    rho = 0.905
    expected = 1 - (13 + 5 * sum(rho ** k for k in range(1, 7)) + 21 * rho ** 7) / 64
    assert flops_reduction(64, PAPER_64, rho) == pytest.approx(expected)
    assert expected == pytest.approx(0.298, abs=1e-3)  # the released default ρ=0.905 ≈ 29.8 %


def test_total_scope_solution_is_consistent():
    shape = ModelShape.repeated(64, 16, 258, Mamba1(d_inner=128, state_size=16, dt_rank=4))
    for logits in ("all", "last"):
        rho = solve_keep_ratio(16, [4, 7, 10, 13], 0.2, scope="total", shape=shape, seq_len=128, logits=logits)
        assert flops_reduction(16, [4, 7, 10, 13], rho, "total", shape, 128, logits) == pytest.approx(0.2, abs=1e-8)
        # hand check with model_flops on the continuous counts (Mamba-1 is linear in length)
        frac = [rho ** sum(1 for l in [4, 7, 10, 13] if l < layer) for layer in range(16)]
        per_tok = layer_flops(shape, 1)
        head = head_flop_terms(shape, 1, 1)
        n_logit_full, n_logit_red = (128, 128 * frac[-1]) if logits == "all" else (1, 1)
        full = 16 * per_tok * 128 + head["norm_f"] * 128 + head["lm_head"] * n_logit_full
        red = per_tok * 128 * sum(frac) + head["norm_f"] * 128 * frac[-1] + head["lm_head"] * n_logit_red
        assert 1 - red / full == pytest.approx(0.2, abs=1e-8)
    with pytest.raises(ConfigError, match="flops_scope"):
        solve_keep_ratio(16, [4, 7], 0.2, scope="total")


def test_unreachable_target_is_a_config_error():
    with pytest.raises(ConfigError, match="reduction.target_flops"):
        solve_keep_ratio(8, [6], 0.5)  # at most 1/8 of the layers can shrink
    assert solve_keep_ratio(8, [6], 0.0) == 1.0


@torch.no_grad()
def test_realised_reduction_from_real_counts(model, family):
    out = reduced_forward(model, random_ids(2, 32), method=KeepFirst(), schedule=Schedule(LOCATIONS, 0.5))
    counts = [32, 32, 32, 16, 16, 8, 8, 4]
    assert out.tokens_per_layer.tolist() == [counts, counts]
    shape = model_shape(model)
    assert out.flops["proxy"] == pytest.approx(1 - sum(counts) / (8 * 32))
    expected_bb = 1 - sum(layer_flops(shape, c) for c in counts) / (8 * layer_flops(shape, 32))
    assert out.flops["backbone"] == pytest.approx(expected_bb)
    expected_total = 1 - model_flops(shape, counts, 4) / model_flops(shape, [32] * 8, 32)
    assert out.flops["total"] == pytest.approx(expected_total)
    assert out.flops["backbone"] == pytest.approx(out.flops["proxy"])  # ideal cost is linear in length
    last = realised_flops_reduction([counts], [32], shape, logits="last")
    assert last["total"] == pytest.approx(1 - model_flops(shape, counts, 1) / model_flops(shape, [32] * 8, 1))


def _Red(**values) -> ReductionConfig:
    """The keys every method shares (the schema build_schedule is typed on), for method utrc."""
    return ReductionConfig(**{"method": "utrc", **values})


def _model64() -> ModelConfig:
    return ModelConfig(name="m", family="mamba2", source="mamba_ssm", path="state-spaces/mamba2-2.7b", n_layer=64,
                       locations=PAPER_64)


def test_build_schedule_variants():
    m = _model64()
    s = build_schedule(_Red(), m)
    assert s.locations == PAPER_64 and s.keep_ratio == pytest.approx(0.9415, abs=5e-5)
    s = build_schedule(_Red(keep_ratio=0.8, target_flops=0.3), m)
    assert s.keep_ratio == 0.8  # ρ wins over f
    s = build_schedule(_Red(location_start=12, location_stride=5), m)
    assert s.locations == list(range(12, 63, 5))  # stop defaults to the depth
    s = build_schedule(_Red(location_start=12, location_stride=5, location_stop=43), m)
    assert s.locations == PAPER_64
    s = build_schedule(_Red(locations=[20, 10]), m)
    assert s.locations == [10, 20]
    assert build_schedule(_Red(target_flops=None), m).keep_ratio == 1.0
    assert build_schedule(_Red(method="none"), m).keep_ratio == 1.0
    with pytest.raises(ConfigError, match=r"^reduction\.locations"):
        build_schedule(_Red(locations=[10, 63]), m)
    with pytest.raises(ConfigError, match=r"^reduction\.locations"):
        build_schedule(_Red(locations=[-1]), m)
    with pytest.raises(ConfigError, match="reduction.location_start"):
        build_schedule(_Red(location_start=70, location_stride=1, location_stop=72), m)
    # total scope on a tiny model: the shape comes from its config
    tiny = tiny_cfg("mamba")
    s = build_schedule(_Red(flops_scope="total"), tiny)
    shape = shape_from_model_config(tiny)
    assert flops_reduction(8, LOCATIONS, s.keep_ratio, "total", shape, None) == pytest.approx(0.2, abs=1e-8)


def test_build_schedule_with_registered_reduction_config():
    import tor_exp.reduction as R

    config_cls, _ = R.registered_methods()["utrc"]
    s = build_schedule(config_cls(method="utrc", target_flops=0.1), tiny_cfg("mamba2"))
    assert s.locations == LOCATIONS
    assert flops_reduction(8, LOCATIONS, s.keep_ratio) == pytest.approx(0.1, abs=1e-9)


def test_no_locations_names_the_locations_key(compose):
    with pytest.raises(ConfigError, match=r"^reduction.locations=\[\]: no reduction locations, so reduction=utrc "
                                          r"cannot reduce anything"):
        compose("model=tiny_mamba2", "reduction.locations=[]")
    compose("model=tiny_mamba2", "reduction=none", "reduction.locations=[]")  # nothing to reduce: fine


def test_reduction_none_ignores_and_never_records_a_target(compose):
    v = compose("model=tiny_mamba2", "reduction=none", "reduction.target_flops=0.3")
    assert v.reduction.target_flops == 0.0 and v.reduction.keep_ratio is None
    v = compose("model=tiny_mamba2", "reduction=none", "reduction.keep_ratio=0.5")
    assert v.reduction.keep_ratio is None
