"""Whole models with mamba_ssm's kernels active: the mamba_ssm checkpoint conversion both ways against the real
``MambaLMHeadModel``, ``model.backend=mamba_ssm`` against ``backend=hf``, and HF's Mamba-2 and Nemotron-H with the
kernels against their torch path (unreduced and UTRC-reduced, left-padded). Logit tolerances in logits (absolute)."""
from __future__ import annotations

import contextlib
import json
import os
import sys

import pytest
import torch

from tor_exp.models import ModelConfig, Schedule, TinyModelConfig, load_model
from tor_exp.models.kernels import kernels_used
from tor_exp.models.patching import reduced_forward
from tor_exp.reduction import build_method

from kernel_shims import torch_path_of

pytestmark = pytest.mark.kernels
TINY = dict(d_model=32, state_size=16, head_dim=8, chunk_size=16)


@contextlib.contextmanager
def counting_ssd_calls():
    """Counts calls of mamba_ssm's chunked SSD forward (proof that the Triton scan ran, not a fallback)."""
    from mamba_ssm.ops.triton import ssd_combined

    calls = [0]
    original = ssd_combined._mamba_chunk_scan_combined_fwd

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    ssd_combined._mamba_chunk_scan_combined_fwd = counted
    try:
        yield calls
    finally:
        ssd_combined._mamba_chunk_scan_combined_fwd = original


@contextlib.contextmanager
def torch_path(model):
    """The model's modeling module with every kernel-or-fallback function bound to its torch reference."""
    module = sys.modules[type(model).__module__]
    names = ("mamba_chunk_scan_combined", "selective_state_update", "causal_conv1d_fn", "causal_conv1d_update")
    saved = {name: value for name, value in vars(module).items() if torch_path_of(value, names) is not None}
    for name, value in saved.items():
        setattr(module, name, torch_path_of(value, names))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@contextlib.contextmanager
def mamba1_scan_reference():
    """mamba_ssm's Mamba-1 prefill calls the compiled CUDA scan; its own torch reference stands in on CPU."""
    from mamba_ssm.modules import mamba_simple
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    original = mamba_simple.selective_scan_fn
    mamba_simple.selective_scan_fn = selective_scan_ref
    try:
        yield
    finally:
        mamba_simple.selective_scan_fn = original


def _ids(batch=2, length=37, seed=0):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _utrc(compose, source="ssm_out"):
    v = compose("model=tiny_mamba2", "reduction=utrc", "reduction.keep_ratio=0.6",
                f"reduction.importance_source={source}")
    return build_method(v.reduction)


def _evit(compose, source="ssm_out"):
    v = compose("model=tiny_mamba2", "reduction=evit", "reduction.keep_ratio=0.6",
                f"reduction.importance_source={source}")
    return build_method(v.reduction)


@pytest.mark.parametrize("family", ["mamba2", "mamba"])
@torch.no_grad()
def test_real_mamba_ssm_checkpoint_converts_to_hf(tmp_path, family):
    """A checkpoint written by mamba_ssm itself (MambaLMHeadModel.save_pretrained, vocab 258 padded to 264) loads
    through tor_exp's conversion (model.source=mamba_ssm, backend=hf) with the real model's logits."""
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from tor_exp.models.families.mamba_ssm import without_conv_kernel

    ssm_cfg = {"d_state": 16}
    if family == "mamba2":
        ssm_cfg |= {"layer": "Mamba2", "headdim": 8, "ngroups": 2, "chunk_size": 16}
    torch.manual_seed(0)
    real = MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=258, ssm_cfg=ssm_cfg)).eval()
    for p in real.parameters():  # move off the init values (D = 1, zero biases) so every weight matters
        p.add_(0.05 * torch.randn_like(p))
    without_conv_kernel(real)
    real.save_pretrained(str(tmp_path / "ssm"))
    hf, _ = load_model(ModelConfig(name="x", family=family, source="mamba_ssm", path=str(tmp_path / "ssm"),
                                   tokenizer="byte", n_layer=2, locations=[0]))
    ids = _ids()
    with mamba1_scan_reference() if family == "mamba" else contextlib.nullcontext():
        expected = real(ids).logits
    assert hf.config.vocab_size == 264 == expected.shape[-1]
    torch.testing.assert_close(hf(ids).logits, expected, atol=2e-4, rtol=0)


def write_mamba_ssm_checkpoint(model, path) -> None:
    """A HF Mamba-2 in mamba_ssm's layout (config.json with d_model / ssm_cfg, pytorch_model.bin)."""
    c = model.config
    raw = {"d_model": c.hidden_size, "n_layer": c.num_hidden_layers, "vocab_size": 258, "pad_vocab_size_multiple": 8,
           "ssm_cfg": {"layer": "Mamba2", "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
                       "headdim": c.head_dim, "ngroups": c.n_groups, "chunk_size": c.chunk_size},
           "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "tie_embeddings": True}
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in model.state_dict().items()}
    os.makedirs(path, exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw))
    torch.save(state, path / "pytorch_model.bin")


@pytest.fixture(scope="module")
def both_backends(tmp_path_factory):
    """One tiny Mamba-2 (vocab 264) as HF (tor_exp's tiny model) and as mamba_ssm's MambaLMHeadModel
    (model.backend=mamba_ssm loading the HF weights written in mamba_ssm's layout)."""
    path = tmp_path_factory.mktemp("ckpt") / "ssm"
    hf, _ = load_model(ModelConfig(name="x", family="mamba2", source="tiny", n_layer=3, locations=[1],
                                   tiny=TinyModelConfig(**TINY, n_layer=3, vocab_size=264, n_groups=2)))
    write_mamba_ssm_checkpoint(hf, path)
    ssm, _ = load_model(ModelConfig(name="x", family="mamba2", source="mamba_ssm", backend="mamba_ssm",
                                    path=str(path), tokenizer="byte", n_layer=3, locations=[1]), device="cpu")
    return hf, ssm


@torch.no_grad()
def test_hf_weights_in_mamba_ssm_layout_load_into_the_real_model(both_backends):
    """The other direction: the real MambaLMHeadModel reads the HF weights (renamed, vocab padded) to the same
    logits; its kernels are the Triton ones, its conv torch (no causal_conv1d)."""
    hf, ssm = both_backends
    assert type(ssm).__name__ == "MambaLMHeadModel"
    assert kernels_used(ssm) == {"mamba2_scan": "mamba_ssm triton", "ssm_update": "mamba_ssm triton",
                                 "causal_conv1d": "torch", "conv_update": "torch", "rms_norm": "mamba_ssm triton"}
    ids = _ids()
    with counting_ssd_calls() as calls:
        got = ssm(ids).logits
    assert calls[0] == 3
    torch.testing.assert_close(got, hf(ids).logits, atol=2e-4, rtol=0)


@pytest.mark.parametrize("make", [_utrc, _evit], ids=["utrc", "evit"])
@torch.no_grad()
def test_backend_mamba_ssm_reduced_forward_equals_backend_hf(both_backends, compose, make):
    hf, ssm = both_backends
    method, schedule = make(compose, "mixer_out"), Schedule(locations=[1], keep_ratio=0.6)
    ids = _ids(batch=1, length=41, seed=2)
    a = reduced_forward(hf, ids, method=method, schedule=schedule)
    b = reduced_forward(ssm, ids, method=method, schedule=schedule)
    assert a.logits.shape[1] < ids.shape[1]  # reduced
    assert torch.equal(a.positions, b.positions)
    torch.testing.assert_close(b.logits, a.logits, atol=2e-4, rtol=0)


HYBRID = {"hybrid_override_pattern": "M*M", "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
          "intermediate_size": 64}


@pytest.mark.parametrize("family", ["mamba2", "nemotron_h"])
@torch.no_grad()
def test_hf_with_kernels_equals_its_torch_path(family, compose):
    """Unreduced and UTRC-reduced (importance from the SSM output y), left-padded batch of 2."""
    model, _ = load_model(ModelConfig(name="x", family=family, source="tiny", n_layer=3, locations=[0],
                                      tiny=TinyModelConfig(**TINY, n_layer=3,
                                                           config=HYBRID if family == "nemotron_h" else {})))
    assert kernels_used(model)["mamba2_scan"] == "mamba_ssm triton"
    ids = _ids(length=40, seed=3)
    mask = torch.ones_like(ids)
    mask[0, :9] = 0
    method, schedule = _utrc(compose), Schedule(locations=[0], keep_ratio=0.6)
    outs = {}
    for path in ("kernels", "torch"):
        with (torch_path(model) if path == "torch" else contextlib.nullcontext()), counting_ssd_calls() as calls:
            plain = reduced_forward(model, ids, mask)
            reduced = reduced_forward(model, ids, mask, method=method, schedule=schedule)
        assert (calls[0] > 0) == (path == "kernels")
        outs[path] = (plain, reduced)
    (kp, kr), (tp, tr) = outs["kernels"], outs["torch"]
    real = mask.bool()
    torch.testing.assert_close(kp.logits[real], tp.logits[real], atol=1e-4, rtol=0)
    assert torch.equal(kr.positions, tr.positions) and torch.equal(kr.valid, tr.valid)
    assert kr.valid.sum() < real.sum()
    torch.testing.assert_close(kr.logits[kr.valid], tr.logits[tr.valid], atol=1e-4, rtol=0)
