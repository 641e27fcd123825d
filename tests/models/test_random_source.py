"""``model.source: random``: a checkpoint's shape (its config.json, read as the loader reads it), weights drawn with
``model.seed``; no weight file is read, and the record says the weights are random."""
from __future__ import annotations

import json

import pytest
import torch

from tor_exp.errors import ConfigError
from tor_exp.models.config import ModelConfig
from tor_exp.models.loading import checkpoint_config, load_model
from tor_exp.records import checkpoint as ckpt

from conftest import tiny_cfg


def random_cfg(path, seed: int = 0, **kw) -> ModelConfig:
    base = dict(name="rand", family="mamba2", source="random", path=str(path), tokenizer="byte", n_layer=4,
                locations=[1], seed=seed)
    return ModelConfig(**(base | kw))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Mamba-2 (seed 7) saved with save_pretrained (config.json + model.safetensors) and its weights."""
    folder = tmp_path_factory.mktemp("saved")
    model, _ = load_model(ModelConfig(**{**tiny_cfg("mamba2", n_layer=4).__dict__, "seed": 7}))
    model.save_pretrained(folder)
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def test_random_weights_at_the_saved_shape_seeded(saved):
    folder, weights = saved
    a, tok = load_model(random_cfg(folder))
    b, _ = load_model(random_cfg(folder))
    c, _ = load_model(random_cfg(folder, seed=1))
    assert a.state_dict().keys() == weights.keys()
    for key, value in a.state_dict().items():
        assert value.shape == weights[key].shape, key
        assert torch.equal(value, b.state_dict()[key]), key  # the seed fixes the draw
    embed = "backbone.embeddings.weight"
    assert not torch.equal(a.state_dict()[embed], weights[embed])  # not the saved weights
    assert not torch.equal(a.state_dict()[embed], c.state_dict()[embed])  # another seed, another draw
    # drawn as the tiny model draws its weights: at the saved model's seed the draw is the saved model
    same, _ = load_model(random_cfg(folder, seed=7))
    assert all(torch.equal(v, weights[k]) for k, v in same.state_dict().items())
    assert a.config.hidden_size == 32 and not a.training and tok.eos_token_id == 256


def test_no_weight_file_is_read(saved, tmp_path):
    """A folder holding config.json only loads; the weights of a full checkpoint are neither read nor hashed."""
    folder, _ = saved
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    model, _ = load_model(random_cfg(tmp_path))
    assert sum(p.numel() for p in model.parameters()) > 0
    record = ckpt.checkpoint_record({"source": "random", "path": str(folder), "seed": 0})
    assert record["weights"] == "random" and record["files"] == {"config.json": (folder / "config.json").stat().st_size}
    assert record["fingerprint"].startswith("random-")
    # the config.json only and the model config (seed) make the fingerprint
    only_config = ckpt.checkpoint_record({"source": "random", "path": str(tmp_path), "seed": 0})
    other_seed = ckpt.checkpoint_record({"source": "random", "path": str(folder), "seed": 1})
    assert other_seed["fingerprint"] != record["fingerprint"]
    assert ckpt.checkpoint_record({"source": "random", "path": str(folder), "seed": 0}) == record
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "num_hidden_layers": 5}))
    changed = ckpt.checkpoint_record({"source": "random", "path": str(tmp_path), "seed": 0})
    assert changed["fingerprint"] != only_config["fingerprint"]


def test_checkpoint_record_hashes_no_weight_file(saved, monkeypatch):
    folder, _ = saved
    opened = []
    real = ckpt._file_digest
    monkeypatch.setattr(ckpt, "_file_digest", lambda path, size: opened.append(path.name) or real(path, size))
    ckpt.checkpoint_record({"source": "random", "path": str(folder), "seed": 0})
    assert opened == ["config.json"]
    ckpt.checkpoint_record({"source": "local", "path": str(folder), "seed": 0})  # a real load hashes the weights
    assert "model.safetensors" in opened


def test_the_shipped_reference_folder_at_random(compose):
    """model=reference model.source=random: the reference model's config.json, random weights of that shape."""
    from tor_exp.models import adapter_of

    cfg = compose("model=reference", "model.source=random", "reduction=none").model
    model, _ = load_model(cfg)
    real, _ = load_model(compose("model=reference", "reduction=none").model)
    def shape(m):
        return {k: v for k, v in m.config.to_dict().items() if "dtype" not in k}

    assert adapter_of(model).num_layers(model) == 24 and shape(model) == shape(real)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert not torch.equal(model.lm_head.weight, real.lm_head.weight.float())


def test_a_paper_hub_id_is_known_offline():
    """The paper's checkpoints are known by their hub id (no hub, no cache here): the job validates and its
    shape is the published one."""
    cfg = ModelConfig(name="m", family="mamba2", source="random", path="state-spaces/mamba2-2.7b", n_layer=64,
                      locations=[12, 17, 22, 27, 32, 37, 42])
    config = checkpoint_config(cfg)
    assert (config.hidden_size, config.num_hidden_layers) == (2560, 64)
    assert ckpt.checkpoint_record({"source": "random", "path": cfg.path, "seed": 0})["files"] == {}


def test_unknown_shape_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="model.path="):
        load_model(random_cfg("someone/unknown-model"))
