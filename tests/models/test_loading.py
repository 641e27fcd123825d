"""Loading: tiny models, HF-format directories, pkg:// paths and mamba_ssm-format conversion (both families)."""
from __future__ import annotations

import json
import os

import pytest
import torch

import tor_exp.models
from tor_exp.errors import ConfigError
from tor_exp.models.config import ModelConfig
from tor_exp.models.loading import load_model, resolve_path
from tor_exp.models.tokenizer import byte_tokenizer

from conftest import random_ids, tiny_cfg


def test_byte_tokenizer_round_trip():
    tok = byte_tokenizer()
    text = "héllo, wörld!"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert (tok.eos_token_id, tok.pad_token_id, len(tok)) == (256, 257, 258)


def test_tiny_models_are_deterministic(family):
    a, _ = load_model(tiny_cfg(family, n_layer=2))
    b, _ = load_model(tiny_cfg(family, n_layer=2))
    c, _ = load_model(ModelConfig(**{**tiny_cfg(family, n_layer=2).__dict__, "seed": 1}))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.backbone.embeddings.weight, c.backbone.embeddings.weight)
    assert not a.training


@torch.no_grad()
def test_hf_format_directory_and_pkg_paths(tmp_path, tiny_models, family):
    model = tiny_models[family][0]
    model.save_pretrained(tmp_path / "m")
    ids = random_ids(2, 20)
    for source in ("local", "hf"):
        cfg = ModelConfig(name="x", family=family, source=source, path=str(tmp_path / "m"), tokenizer="byte",
                          n_layer=8, locations=[2, 4, 6])
        loaded, tok = load_model(cfg)
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        assert tok.pad_token_id == 257
    assert resolve_path("pkg://tor_exp/models") == os.path.dirname(tor_exp.models.__file__)
    assert resolve_path("/abs/dir") == "/abs/dir"
    with pytest.raises(ConfigError, match="model.path"):
        resolve_path("pkg://no_such_package_xyz/assets")
    with pytest.raises(ConfigError, match="model.path"):
        load_model(ModelConfig(name="x", family=family, source="local", path=str(tmp_path / "nope"), n_layer=8,
                               locations=[2]))
    with pytest.raises(ConfigError, match="model.n_layer"):
        load_model(ModelConfig(name="x", family=family, source="local", path=str(tmp_path / "m"),
                               tokenizer="byte", n_layer=9, locations=[2]))


def write_mamba_ssm_checkpoint(model, family: str, path, drop_lm_head: bool) -> None:
    """Write a HF model back in mamba_ssm's layout: config.json (MambaConfig of mamba_ssm) + pytorch_model.bin
    with ``backbone.embedding`` and an unpadded vocab_size that pad_vocab_size_multiple must pad again."""
    c = model.config
    ssm_cfg = {"d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand}
    if family == "mamba2":
        ssm_cfg |= {"layer": "Mamba2", "headdim": c.head_dim, "ngroups": c.n_groups, "chunk_size": c.chunk_size}
    raw = {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": 258,
           "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
           "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and drop_lm_head:
            continue
        state[key.replace("backbone.embeddings.", "backbone.embedding.")] = value.clone()
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(raw, fh)
    torch.save(state, os.path.join(path, "pytorch_model.bin"))


@pytest.mark.parametrize("drop_lm_head", [False, True])
@torch.no_grad()
def test_mamba_ssm_checkpoint_conversion(tmp_path, family, drop_lm_head):
    # vocab 264 = 258 padded to a multiple of 8, as MambaLMHeadModel stores it
    hf_model, _ = load_model(tiny_cfg(family, n_layer=3, vocab_size=264))
    write_mamba_ssm_checkpoint(hf_model, family, tmp_path / "ssm", drop_lm_head)
    cfg = ModelConfig(name="x", family=family, source="mamba_ssm", path=str(tmp_path / "ssm"), tokenizer="byte",
                      n_layer=3, locations=[1])
    loaded, _ = load_model(cfg)
    assert type(loaded) is type(hf_model)
    assert loaded.config.vocab_size == 264
    assert loaded.lm_head.weight.data_ptr() == loaded.backbone.embeddings.weight.data_ptr()
    ids = random_ids(2, 21)
    assert torch.equal(loaded(ids).logits, hf_model(ids).logits)
    other = "mamba" if family == "mamba2" else "mamba2"
    with pytest.raises(ConfigError, match="model.family"):
        load_model(ModelConfig(name="x", family=other, source="mamba_ssm", path=str(tmp_path / "ssm"),
                               tokenizer="byte", n_layer=3, locations=[1]))


def _edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("config_layers", [12, 4])
def test_weights_that_do_not_cover_the_model_are_refused(tmp_path, tiny_models, config_layers):
    """config.json says another depth than the weights hold: more layers would be random, fewer would drop weights;
    both are one-line errors unless model.allow_partial, which loads and records what is off."""
    model = tiny_models["mamba2"][0]  # 8 layers
    model.save_pretrained(tmp_path / "m")
    _edit_config(tmp_path / "m", num_hidden_layers=config_layers)
    cfg = dict(name="x", family="mamba2", source="local", path=str(tmp_path / "m"), tokenizer="byte",
               n_layer=config_layers, locations=[2])
    with pytest.raises(ConfigError, match=rf"^model.path='.*': the weights hold 8 layers, config.json says "
                                          rf"{config_layers}; model.allow_partial=true"):
        load_model(ModelConfig(**cfg))
    loaded, _ = load_model(ModelConfig(**cfg, allow_partial=True))
    report = tor_exp.models.partial_weights(loaded)
    assert report is not None and "8 layers" in report["problem"]
    if config_layers > 8:
        assert any(".layers.11." in k for k in report["missing"]) and not report["unexpected"]
    else:
        assert any(".layers.7." in k for k in report["unexpected"]) and not report["missing"]
    model.save_pretrained(tmp_path / "exact")
    exact, _ = load_model(ModelConfig(**{**cfg, "path": str(tmp_path / "exact"), "n_layer": 8}))
    assert tor_exp.models.partial_weights(exact) is None


def test_a_missing_weight_is_refused(tmp_path, tiny_models):
    from safetensors.torch import load_file, save_file

    model = tiny_models["mamba2"][0]
    model.save_pretrained(tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    del weights["backbone.layers.3.mixer.D"]
    save_file(weights, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"1 missing \(backbone.layers.3.mixer.D\)"):
        load_model(ModelConfig(name="x", family="mamba2", source="local", path=str(tmp_path / "m"),
                               tokenizer="byte", n_layer=8, locations=[2]))


def test_a_tiny_model_with_a_path_is_refused():
    with pytest.raises(ConfigError, match=r"^model.path='/nonexistent': model.source=tiny builds a random model"):
        ModelConfig(name="x", family="mamba2", source="tiny", path="/nonexistent", n_layer=16, locations=[4])


def test_model_local_reads_the_family_and_depth_from_config_json(compose):
    cfg = compose("model=local", "model.path=pkg://tor_exp/reference/assets", "reduction=utrc").model
    model, _ = load_model(cfg)
    assert type(model).__name__ == "Mamba2ForCausalLM" and len(model.backbone.layers) == 24
