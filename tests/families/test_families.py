"""Every hybrid family against HF itself (METHOD.md §7): the unreduced loop equals HF's forward and generate, a
prune-only reduction equals HF's layers run on the kept tokens at their original positions, batch composition
never changes a row, scored tokens always survive, a reduced prefill's cache decodes like a prefill of the longer
prompt, the lm-eval backend equals lm-eval's HFLM on a saved checkpoint, and the job runs end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from tor_exp.errors import ConfigError
from tor_exp.models import patch, reduced_forward, unpatch
from tor_exp.models.schedule import Schedule
from tor_exp.reduction import build_method
from tor_exp.reduction.base import ReductionConfig, ReductionMethod
from tor_exp.reduction.merge import ReductionPlan
from tor_exp.reduction.state import TokenState

from family_cases import FAMILIES, padded_mask, random_ids
from references import PRUNE_REFERENCES

#: logits of the same computation through tor_exp's loop and through HF (fp32): float32 rounding of one
#: subtraction and re-addition of a block's input at a reduction location stays far below this
TOL = 1e-4


class DropPositions(ReductionMethod):
    """Prune-only test method: removes the reducible tokens whose original position is ≡ 1 (mod 3)."""

    def __init__(self) -> None:
        super().__init__(ReductionConfig(method="drop_positions"))

    def plan(self, state: TokenState, features: dict[str, Tensor], keep_ratio: float,
             location: int) -> ReductionPlan | None:
        return ReductionPlan.pruning(state.valid & ~(state.reducible & (state.positions % 3 == 1)))


def _within(model, locations: list[int]) -> list[int]:
    """The ``locations`` a model of its depth can reduce at (the 4-layer tiny models have fewer)."""
    from tor_exp.models import model_shape

    return [l for l in locations if l <= model_shape(model).n_layer - 2]


def _locations_by_part(cfg, model) -> dict[str, int]:
    """One reduction location per kind of layer (the first of each kind that may reduce)."""
    from tor_exp.models import model_shape

    shape = model_shape(model)
    found: dict[str, int] = {}
    for layer in range(shape.n_layer - 1):
        found.setdefault("+".join(shape.kinds(layer)), layer)
    return found


def test_every_family_has_a_tiny_config_and_a_reference():
    from tor_exp.config import config_dir
    from tor_exp.models.config import FAMILIES as CONFIG_FAMILIES, HYBRID_FAMILIES
    from tor_exp.models.families import families

    registered = families()
    assert set(CONFIG_FAMILIES) == set(registered) - {"mamba_ssm"}
    assert set(HYBRID_FAMILIES) == {name for name, a in registered.items() if a.hybrid}
    beyond_the_paper = set(CONFIG_FAMILIES) - {"mamba", "mamba2"}
    assert set(FAMILIES) == beyond_the_paper
    from pathlib import Path

    assert all((Path(config_dir()) / "model" / f"tiny_{f}.yaml").is_file() for f in beyond_the_paper)


@torch.no_grad()
def test_unreduced_equals_hf_forward_with_padding(tiny_family):
    model, _, _ = tiny_family
    ids, mask = random_ids(3, 37), padded_mask(3, 37)
    ref = model(input_ids=ids, attention_mask=mask).logits
    plain = reduced_forward(model, ids, mask)
    patch(model, build_method(build_cfg("utrc", keep_ratio=1.0)), Schedule(_within(model, [1, 3, 5]), 1.0))
    at_rho_one = reduced_forward(model, ids, mask)
    real = mask.bool()
    for out in (plain, at_rho_one):
        assert torch.equal(out.positions, torch.where(real, torch.arange(37), -1))
        assert (out.logits - ref).abs()[real].max() <= 1e-5


def build_cfg(method: str, **keys):
    from tor_exp.reduction import registered_methods

    cls, _ = registered_methods()[method]
    return cls(**keys)


@torch.no_grad()
def test_prune_only_equals_hf_layers_on_the_kept_tokens(tiny_family, family):
    model, _, cfg = tiny_family
    ids = random_ids(1, 29, seed=3)
    for kind, location in _locations_by_part(cfg, model).items():
        patch(model, DropPositions(), Schedule([location], 0.5))
        out = reduced_forward(model, ids)
        keep = torch.tensor([p for p in range(29) if p % 3 != 1])
        assert torch.equal(out.positions[0], keep), kind
        ref = PRUNE_REFERENCES[family](model, ids, location, keep)
        assert (out.logits - ref).abs().max() <= TOL, (kind, location)


@pytest.mark.parametrize("method", ["utrc", "evit", "pumer", "ltmp"])
@torch.no_grad()
def test_batch_of_eight_equals_each_row_alone(tiny_family, method):
    model, tok, cfg = tiny_family
    from tor_exp.models import build_reduction, model_shape, reducing

    reduction, schedule = build_reduction(build_cfg(method, target_flops=0.3), cfg, shape=model_shape(model))
    ids, mask = random_ids(8, 33, seed=5), padded_mask(8, 33)
    with reducing(model, reduction, schedule, tokenizer=tok):
        batch = reduced_forward(model, ids, mask)
        for b in range(8):
            row = mask[b].bool()
            alone = reduced_forward(model, ids[b:b + 1, row])
            n = int(alone.valid.sum())
            offset = int(torch.nonzero(row)[0])
            kept = batch.positions[b][batch.valid[b]]
            assert torch.equal(kept - offset, alone.positions[0, :n]), (method, b)
            # a threshold method (LTMP, uncalibrated here) may remove every token of a row, alone and in the batch
            assert n == 0 or (batch.logits[b][batch.valid[b]] - alone.logits[0, :n]).abs().max() <= TOL, (method, b)
        assert batch.flops["backbone"] > 0.0


@torch.no_grad()
def test_protected_tokens_always_survive(tiny_family):
    model, tok, cfg = tiny_family
    from tor_exp.models import build_reduction, model_shape

    reduction, schedule = build_reduction(build_cfg("utrc", keep_ratio=0.5), cfg, shape=model_shape(model))
    ids, mask = random_ids(4, 40, seed=7), padded_mask(4, 40)
    protected = torch.zeros_like(mask, dtype=torch.bool)
    for b in range(4):
        real = torch.nonzero(mask[b]).flatten()
        protected[b, real[-6:]] = True  # a scored continuation
    patch(model, reduction, schedule)
    out = reduced_forward(model, ids, mask, protected=protected)
    for b in range(4):
        survivors = set(out.positions[b][out.valid[b]].tolist())
        assert set(torch.nonzero(protected[b]).flatten().tolist()) <= survivors
    assert int(out.tokens_per_layer[:, -1].sum()) < int(mask.sum())


@torch.no_grad()
def test_greedy_generation_after_an_unreduced_prefill_equals_hf_generate(tiny_family):
    model, _, _ = tiny_family
    ids, mask = random_ids(3, 24, seed=9), torch.ones(3, 24, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :9] = 0  # generation pads on the left
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ref = model.generate(**kw)
    patch(model, build_method(build_cfg("utrc", keep_ratio=1.0)), Schedule(_within(model, [1, 3]), 1.0))
    assert torch.equal(model.generate(**kw), ref)


@torch.no_grad()
def test_reduced_prefill_decodes_like_a_prefill_of_the_longer_prompt(tiny_family):
    """Cache path vs no-cache path: decoding token t after a reduced prefill gives the logits that a reduced
    prefill of prompt + t gives at t (the pruning rule depends on positions only, so both keep the same tokens)."""
    from tor_exp.models.generation import decode_step, prefill

    model, _, cfg = tiny_family
    ids, mask = random_ids(2, 26, seed=11), torch.ones(2, 27, dtype=torch.long)
    mask[1, :4] = 0
    nxt = random_ids(2, 1, seed=12)
    patch(model, DropPositions(), Schedule(list(cfg.locations), 0.5))
    out = prefill(model, ids, mask[:, :-1])
    decoded = decode_step(model, nxt[:, 0], out.cache)
    longer = torch.cat([ids, nxt], dim=1)
    protected = torch.zeros(2, 27, dtype=torch.bool)
    protected[:, -2:] = True  # the prompt's last token survives the prefill too
    ref = reduced_forward(model, longer, mask, protected=protected, logits="last")
    assert (decoded - ref.logits[:, 0]).abs().max() <= TOL


def test_unsupported_combinations_are_one_line_errors(compose, family):
    with pytest.raises(ConfigError, match="model.backend=mamba_ssm"):
        compose(f"model=tiny_{family}", "model.backend=mamba_ssm", "model.source=mamba_ssm", "model.path=x/y")
    with pytest.raises(ConfigError, match=rf"^reduction=utrc_official: parity mode .* not model.family={family}"):
        compose(f"model=tiny_{family}", "reduction=utrc_official")


def test_a_location_whose_mamba_mixer_is_a_location_too_is_refused(compose):
    """Nemotron-H tiny pattern M-M*M-M*: the attention block 3 ranks by Mamba block 2's y, which block 2's own
    reduction has already changed."""
    with pytest.raises(ConfigError, match=r"reduction.locations=\[2, 3\]: layer 3 ranks tokens by the Mamba mixer "
                                          r"of layer 2"):
        compose("model=tiny_nemotron_h", "reduction.locations=[2,3]")
    compose("model=tiny_nemotron_h", "reduction.locations=[2,3]", "reduction.importance_source=mixer_out")


def test_the_job_reduces_a_hybrid_end_to_end(compose, family, tmp_path):
    """`python -m tor_exp model=tiny_<family> eval=smoke` (in process): UTRC realises a reduction > 0."""
    from tor_exp.run import run

    cfg = compose.dict(f"model=tiny_{family}", "eval=smoke", "eval.limit=4", "device=cpu")
    results = run(cfg, out_dir=tmp_path)
    assert results["status"] == "complete" and results["method"] == "utrc"
    assert results["realised_flops_reduction"] > 0.0
    record = json.loads((tmp_path / "results.json").read_text())
    assert math.isfinite(record["metrics"]["lambada_fixture"]["perplexity"])


def test_lm_eval_backend_without_reduction_equals_hflm_on_a_saved_checkpoint(family_models, family, tmp_path,
                                                                            monkeypatch):
    """`model=local model.path=DIR` (family read from config.json) through lm-eval's simple_evaluate vs lm-eval's own
    HFLM on the same saved checkpoint, per request."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    import tor_exp.lm_eval  # noqa: F401  (registers "tor_exp")
    from tor_exp.evaluation.config import FIXTURE_TASKS
    from tor_exp.evaluation.runner import light_env_info, task_manager

    model, tok, _ = family_models[family]
    unpatch(model)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    tasks = ["lambada_fixture", "piqa_fixture", "arc_easy_fixture"]
    assert set(tasks) <= set(FIXTURE_TASKS)
    tm = task_manager(["pkg://tor_exp/evaluation/tasks"], tasks)

    def per_request(lm, args=None):
        with light_env_info():
            raw = lm_eval.simple_evaluate(model=lm, model_args=args, tasks=tasks, limit=3, task_manager=tm,
                                          log_samples=True, bootstrap_iters=0, batch_size=4)
        return {(t, s["doc_id"], i): float(r[0][0]) for t, samples in raw["samples"].items() for s in samples
                for i, r in enumerate(s["resps"])}

    ours = per_request("tor_exp", f"model=local,model.path={tmp_path / 'ckpt'},reduction=none")
    ref = per_request(HFLM(pretrained=str(tmp_path / "ckpt"), batch_size=4, device="cpu"))
    assert set(ours) == set(ref) and len(ours) >= 9
    assert max(abs(ours[k] - ref[k]) for k in ours) <= 1e-4


@torch.no_grad()
def test_given_embeddings_are_treated_as_hf_treats_them(tiny_family):
    """``inputs_embeds`` instead of ids: HF's own rule per family (Granite scales them, others do not)."""
    from tor_exp.models.backbone import forward

    model, _, _ = tiny_family
    ids = random_ids(1, 19, seed=13)
    embeds = model.get_input_embeddings()(ids)
    ref = model(inputs_embeds=embeds).logits
    assert (forward(model, None, inputs_embeds=embeds).logits - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("depth", [8, 16, 32, 52])
def test_default_locations_of_a_hybrid_rank_by_their_own_mamba_mixer(depth):
    """A checkpoint whose config gives no locations (hub configs: locations null): the scaled paper pattern moves to
    Mamba layers, so UTRC's importance never has to cross another location (a Jamba-like 1:7 pattern here)."""
    from tor_exp.models.schedule import default_locations, importance_sources
    from tor_exp.models.shape import MLP, Attention, Mamba1, ModelShape, MoE

    attention, mamba = Attention(heads=2, kv_heads=2, head_dim=32), Mamba1(d_inner=128, state_size=16)
    mlp, moe = MLP(size=128), MoE(experts=4, top_k=2, size=64)
    layers = tuple((attention, mlp) if l % 8 == 4 else (mamba, moe if l % 2 else mlp) for l in range(depth))
    shape = ModelShape(64, depth, 258, layers)
    locations = default_locations(depth, shape)
    assert locations and all(0 <= l <= depth - 2 for l in locations) and locations == sorted(set(locations))
    method = build_method(build_cfg("utrc", keep_ratio=0.8))
    sources = importance_sources(method, Schedule(locations, 0.8), shape)
    assert all(sources[l] == l for l in locations)


@torch.no_grad()
def test_the_solved_schedule_meets_a_flops_target_on_the_hybrid(tiny_family):
    """ρ solved on the family's FLOP shape (attention quadratic, MLP/MoE linear) at the input length removes the target
    share of the model's FLOPs, and a forward at that length realises it up to the per-location ceil."""
    from tor_exp.models import build_reduction, model_shape, reducing
    from tor_exp.models.flops import flops_reduction

    model, tok, cfg = tiny_family
    shape = model_shape(model)
    reduction, schedule = build_reduction(build_cfg("utrc", target_flops=0.2), cfg, shape=shape, seq_len=96)
    assert flops_reduction(shape.n_layer, schedule.locations, schedule.keep_ratio, shape=shape,
                           seq_len=96) == pytest.approx(0.2, abs=1e-8)
    with reducing(model, reduction, schedule, tokenizer=tok):
        out = reduced_forward(model, random_ids(1, 96, seed=17))
    assert abs(out.flops["backbone"] - 0.2) <= 0.03
