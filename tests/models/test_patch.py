"""The patch adapter: exactness at ρ=1, batch/padding invariance, hand-worked reductions, ssm_out capture,
unpatch, and the HF-compatible patched forward."""
from __future__ import annotations


import pytest
import torch
from transformers.models.mamba import modeling_mamba

import tor_exp.reduction as R
from tor_exp.errors import ConfigError
from tor_exp.models.schedule import Schedule
from tor_exp.models.patching import get_patch, is_patched, patch, reduced_forward, unpatch

from _tiny_methods import KeepFirst, MergeRight, kept_count
from conftest import LOCATIONS, random_ids

# Real methods that promise batch-size independence (METHOD.md §5); the *_official parity methods treat the
# whole padded sequence as reducible by design, so only their ρ=1 behaviour is checked here.
PAPER_METHODS = ["none", "utrc", "evit", "pumer", "ltmp"]


def build_real(name: str, keep_ratio: float = 0.6):
    config_cls, _ = R.registered_methods()[name]
    return R.build_method(config_cls(method=name, keep_ratio=keep_ratio))


def calibrated(name: str, model, schedule: Schedule):
    """Real method ready for inference (LTMP is calibrated on a fixed batch first)."""
    method = build_real(name, schedule.keep_ratio)
    if name == "ltmp":
        with torch.no_grad(), method.calibrating():
            reduced_forward(model, random_ids(2, 40, seed=99), method=method, schedule=schedule)
    return method


def padded_batch(lengths: list[int], seed: int = 1):
    ids = random_ids(len(lengths), max(lengths), seed=seed)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 257
    return ids, mask


def hf_reference(model, ids: torch.Tensor, kind: str, keep_ratio: float) -> tuple[torch.Tensor, list[int]]:
    """One unpadded row through HF's own blocks, shortening h = residual + mixer_out by hand at each location."""
    h = model.backbone.embeddings(ids)
    positions = list(range(ids.shape[1]))
    for layer, block in enumerate(model.backbone.layers):
        h = block(h)
        if layer not in LOCATIONS:
            continue
        n = h.shape[1]
        k = kept_count(n, keep_ratio)
        if kind == "keep_first":
            h, positions = h[:, :k], positions[:k]
        else:  # merge_right: pairs (0,1), (2,3), … ; the even member merges into the odd one
            r = min(n - k, n // 2)
            rows, keep = [], []
            for j in range(n):
                if j < 2 * r and j % 2 == 0:
                    continue
                rows.append((h[:, j] + h[:, j - 1]) / 2 if (j < 2 * r and j % 2 == 1) else h[:, j])
                keep.append(positions[j])
            h, positions = torch.stack(rows, dim=1), keep
    logits = model.lm_head(model.backbone.norm_f(h)).float()
    return logits, positions


@torch.no_grad()
def test_unpatched_reduced_forward_matches_hf(model):
    ids, mask = padded_batch([40, 29, 17])
    ref = model(ids, attention_mask=mask).logits
    out = reduced_forward(model, ids, mask)
    assert torch.equal(out.logits, ref)
    expected = torch.where(mask.bool(), torch.arange(40).expand(3, 40), torch.tensor(-1))
    assert torch.equal(out.positions, expected)
    assert out.tokens_per_layer.tolist() == [[40] * 8, [29] * 8, [17] * 8]
    assert out.flops["proxy"] == 0.0


# ltmp calibrated at ρ=1 schedules no removal, so its thresholds are infinite and unseen inputs keep every token.
@pytest.mark.parametrize("kind", ["keep_first", "merge_right", "none", "utrc", "evit", "pumer", "ltmp",
                                  "utrc_official", "evit_official", "pumer_official"])
@torch.no_grad()
def test_keep_ratio_one_is_exact(model, kind):
    ids, mask = padded_batch([40, 33])
    ref = model(ids, attention_mask=mask).logits
    schedule = Schedule(LOCATIONS, 1.0)
    method = {"keep_first": KeepFirst, "merge_right": MergeRight}.get(kind)
    method = method() if method else calibrated(kind, model, schedule)
    patch(model, method, schedule)
    out = model(ids, attention_mask=mask)
    assert out.logits.shape == ref.shape
    real = mask.bool()  # logits at padding are meaningless (padding is zeroed once a state is compacted)
    assert torch.equal(out.valid, real)
    torch.testing.assert_close(out.logits[real], ref[real], rtol=0, atol=1e-6)
    assert torch.equal(out.positions[0], torch.arange(40))


@pytest.mark.parametrize("kind", ["keep_first", "merge_right"])
@torch.no_grad()
def test_matches_hand_shortened_hf_blocks(model, kind):
    ids = random_ids(1, 37, seed=3)
    method = KeepFirst() if kind == "keep_first" else MergeRight()
    out = reduced_forward(model, ids, method=method, schedule=Schedule(LOCATIONS, 0.6))
    ref_logits, ref_pos = hf_reference(model, ids, kind, 0.6)
    assert out.positions[0].tolist() == ref_pos
    torch.testing.assert_close(out.logits, ref_logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_token_counts_and_flops_hand_worked(model):
    ids, mask = padded_batch([40, 29])
    out = reduced_forward(model, ids, mask, method=KeepFirst(), schedule=Schedule(LOCATIONS, 0.5))
    # reduce after blocks 2, 4, 6 of 8: ceil(n/2) survives each time
    assert out.tokens_per_layer.tolist() == [[40, 40, 40, 20, 20, 10, 10, 5], [29, 29, 29, 15, 15, 8, 8, 4]]
    assert out.positions[0].tolist() == [0, 1, 2, 3, 4]
    assert out.positions[1].tolist() == [0, 1, 2, 3, -1]
    assert out.valid.tolist() == [[True] * 5, [True] * 4 + [False]]
    expected = 1 - (sum([40, 40, 40, 20, 20, 10, 10, 5]) + sum([29, 29, 29, 15, 15, 8, 8, 4])) / (8 * (40 + 29))
    assert out.flops["proxy"] == pytest.approx(expected)


@torch.no_grad()
def test_protected_tokens_survive(model):
    ids = random_ids(1, 30, seed=4)
    protected = torch.zeros(1, 30, dtype=torch.bool)
    protected[0, [5, 25, 29]] = True
    out = reduced_forward(model, ids, protected=protected, method=KeepFirst(), schedule=Schedule(LOCATIONS, 0.5))
    pos = out.positions[0].tolist()
    assert {5, 25, 29} <= set(pos)
    # 27 reducible → 14 → 7 → 4 kept at the front, plus the 3 protected ones
    assert pos == [0, 1, 2, 3, 5, 25, 29]


@pytest.mark.parametrize("kind", ["keep_first", "merge_right", *PAPER_METHODS])
@torch.no_grad()
def test_padding_never_changes_a_row(model, kind):
    lengths = [40, 29, 17]
    ids, mask = padded_batch(lengths, seed=5)
    protected = torch.zeros_like(mask, dtype=torch.bool)
    protected[1, 20] = True
    schedule = Schedule(LOCATIONS, 0.6)
    method = {"keep_first": KeepFirst, "merge_right": MergeRight}.get(kind)
    method = method() if method else calibrated(kind, model, schedule)
    batch = reduced_forward(model, ids, mask, protected, method=method, schedule=schedule)
    for b, n in enumerate(lengths):
        alone = reduced_forward(model, ids[b:b + 1, :n], None, protected[b:b + 1, :n], method=method,
                                schedule=schedule)
        keep = batch.valid[b]
        assert batch.positions[b][keep].tolist() == alone.positions[0].tolist()
        torch.testing.assert_close(batch.logits[b][keep], alone.logits[0], rtol=1e-4, atol=1e-4)
        assert batch.tokens_per_layer[b].tolist() == alone.tokens_per_layer[0].tolist()
        assert (batch.positions[b][~keep] == -1).all()


@torch.no_grad()
def test_ssm_out_capture_reproduces_mixer_output(model, family):
    """ssm_out is y before gate/gated-norm/out_proj: pushing it through them must give the mixer output."""
    layer = LOCATIONS[0]
    mixer = model.backbone.layers[layer].mixer
    grabbed = {}
    handle = mixer.in_proj.register_forward_hook(lambda _m, _a, out: grabbed.__setitem__("proj", out))
    method = KeepFirst(needs_ssm=True)
    scan = modeling_mamba.mamba_selective_scan
    try:
        reduced_forward(model, random_ids(2, 35, seed=6), method=method, schedule=Schedule(LOCATIONS, 0.7))
    finally:
        handle.remove()
    feats = method.seen[0]
    assert feats["location"] == layer
    e = mixer.out_proj.in_features
    y = feats["ssm_out"]
    assert y.shape == (2, 35, e)
    if family == "mamba":
        gate = grabbed["proj"][..., e:]
        rebuilt = mixer.out_proj(y * torch.nn.functional.silu(gate))
    else:
        gate = grabbed["proj"][..., :e]
        rebuilt = mixer.out_proj(mixer.norm(y, gate))
    torch.testing.assert_close(rebuilt, feats["mixer_out"], rtol=1e-5, atol=1e-5)
    # not requested → not captured, and the Mamba-1 scan function is back in place
    plain = KeepFirst()
    reduced_forward(model, random_ids(1, 20), method=plain, schedule=Schedule(LOCATIONS, 0.7))
    assert "ssm_out" not in plain.seen[0]
    assert modeling_mamba.mamba_selective_scan is scan


@torch.no_grad()
def test_unpatch_restores_exact_behaviour(model):
    ids, mask = padded_batch([30, 22], seed=7)
    cls = type(model)
    before = model(ids, attention_mask=mask).logits
    patch(model, KeepFirst(), Schedule(LOCATIONS, 0.5))
    assert is_patched(model) and type(model) is not cls and isinstance(model, cls)
    reduced = model(ids, attention_mask=mask)
    assert reduced.logits.shape[1] < 30
    # patching again replaces the method/schedule but keeps the original class to restore
    patch(model, MergeRight(), Schedule(LOCATIONS, 0.9))
    assert get_patch(model).original_class is cls
    unpatch(model)
    assert type(model) is cls and not is_patched(model)
    assert torch.equal(model(ids, attention_mask=mask).logits, before)
    assert not hasattr(model(ids, attention_mask=mask), "positions")


@torch.no_grad()
def test_patched_forward_is_hf_compatible(model):
    ids, mask = padded_batch([30, 22], seed=8)
    patch(model, KeepFirst(), Schedule(LOCATIONS, 0.5))
    out = model(ids, attention_mask=mask)
    ref = reduced_forward(model, ids, mask)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.positions, ref.positions)
    last = model(ids, attention_mask=mask, logits_to_keep=1)
    # the last real token of each row is asked for, so it is protected and survives as itself
    assert last.positions[:, 0].tolist() == [29, 21]
    protected = torch.zeros_like(mask, dtype=torch.bool)
    protected[0, 29] = protected[1, 21] = True
    ref_last = reduced_forward(model, ids, mask, protected, logits="last")
    assert torch.equal(last.logits, ref_last.logits)
    with pytest.raises(NotImplementedError):
        model(ids, attention_mask=mask, output_hidden_states=True)
    # loss at ρ=1 equals the unpatched model's loss
    patch(model, KeepFirst(), Schedule(LOCATIONS, 1.0))
    labels = ids.masked_fill(mask == 0, -100)
    patched_loss = model(ids, attention_mask=mask, labels=labels).loss
    unpatch(model)
    plain_loss = model(ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(patched_loss, plain_loss, rtol=1e-6, atol=1e-6)


def test_patch_rejects_bad_locations(model):
    with pytest.raises(ConfigError, match="reduction.locations"):
        patch(model, KeepFirst(), Schedule([2, 7], 0.5))
    assert not is_patched(model)


@torch.no_grad()
def test_bfloat16_keeps_the_residual_in_fp32(family):
    from dataclasses import replace

    from conftest import tiny_cfg
    from tor_exp.models.loading import load_model

    model, _ = load_model(replace(tiny_cfg(family, n_layer=4), locations=[1], dtype="bfloat16"))
    ids, mask = padded_batch([24, 19], seed=9)
    ref = model(ids, attention_mask=mask).logits
    method = KeepFirst()
    out = reduced_forward(model, ids, mask, method=method, schedule=Schedule([1], 1.0))
    real = mask.bool()
    assert torch.equal(out.logits[real], ref[real])  # same ops, same dtypes as HF's blocks
    seen = method.seen[0]
    assert seen["residual"].dtype == torch.float32 and seen["mixer_out"].dtype == torch.bfloat16
