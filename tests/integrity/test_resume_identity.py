"""A record's identity is its config and the weights it was computed on: replace the checkpoint at ``model.path``
and the old numbers are never reused (resume recomputes; a complete record of the other weights is refused
without ``overwrite=true`` and kept aside with it). The launchers' pre-submission filter uses the same rule."""
from __future__ import annotations

import json
import shutil

import pytest

from tor_exp.errors import ConfigError

JOB = ["model=local", "model.tokenizer=byte", "eval=smoke", "eval.tasks=[piqa_fixture]", "eval.limit=2",
       "eval.compare_baseline=false", "device=cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two HF checkpoints of the same shape and config.json, different weights (tiny Mamba-2, seeds 0 and 1)."""
    from tor_exp.config import compose
    from tor_exp.models import load_model

    root = tmp_path_factory.mktemp("ckpt")
    for seed in (0, 1):
        model, _ = load_model(compose(["model=tiny_mamba2", f"model.seed={seed}", "model.tiny.n_layer=4",
                                       "model.n_layer=4", "model.locations=[1]"]).model)
        model.save_pretrained(root / f"seed{seed}")
    assert (root / "seed0" / "config.json").read_bytes() == (root / "seed1" / "config.json").read_bytes()
    return root


def _run(ckpt, out, *extra):
    from tor_exp.config import compose_dict
    from tor_exp.run import run

    return run(compose_dict([*JOB, f"model.path={ckpt}", *extra]), out_dir=out)


def _resolved(ckpt, *extra):
    from omegaconf import OmegaConf

    from tor_exp.config import compose_dict

    return OmegaConf.to_container(compose_dict([*JOB, f"model.path={ckpt}", *extra]), resolve=True)


def test_the_fingerprint_follows_the_files_not_the_path(checkpoints, tmp_path):
    from tor_exp.records.checkpoint import checkpoint_record

    a = checkpoint_record({"source": "local", "path": str(checkpoints / "seed0")})
    b = checkpoint_record({"source": "local", "path": str(checkpoints / "seed1")})
    shutil.copytree(checkpoints / "seed0", tmp_path / "copy")
    copy = checkpoint_record({"source": "local", "path": str(tmp_path / "copy")})
    assert a["fingerprint"] != b["fingerprint"] and copy["fingerprint"] == a["fingerprint"]
    assert set(a["files"]) == {"config.json", "generation_config.json", "model.safetensors"}
    assert a["files"]["model.safetensors"] == (checkpoints / "seed0" / "model.safetensors").stat().st_size
    assert checkpoint_record({"source": "local", "path": str(tmp_path / "missing")})["fingerprint"] is None
    tiny = {"source": "tiny", "path": None, "seed": 0}
    assert checkpoint_record(tiny)["fingerprint"] != checkpoint_record({**tiny, "seed": 1})["fingerprint"]


def test_a_replaced_checkpoint_is_a_new_run_not_a_resumed_one(checkpoints, tmp_path):
    """The issue's case: same path, same config, other weights. Resume refuses the old record (one line) instead
    of returning its numbers; overwrite=true recomputes and keeps the old record aside."""
    from tor_exp.records.results import is_complete

    ckpt, out = tmp_path / "ckpt", tmp_path / "run"
    shutil.copytree(checkpoints / "seed0", ckpt)
    first = _run(ckpt, out)
    assert first["checkpoint"]["path"] == str(ckpt) and first["checkpoint"]["fingerprint"]
    assert is_complete(out, _resolved(ckpt))
    assert _run(ckpt, out)["timings"] == first["timings"]  # same weights: resumed, not recomputed
    before = (out / "results.json").read_bytes()

    shutil.rmtree(ckpt)
    shutil.copytree(checkpoints / "seed1", ckpt)
    assert not is_complete(out, _resolved(ckpt))  # the launchers would submit it again
    with pytest.raises(ConfigError, match=r"holds a complete result of this config on other weights .*"
                                          r"overwrite=true"):
        _run(ckpt, out)
    assert (out / "results.json").read_bytes() == before
    second = _run(ckpt, out, "overwrite=true")
    assert second["checkpoint"]["fingerprint"] != first["checkpoint"]["fingerprint"]
    assert second["timings"] != first["timings"] and is_complete(out, _resolved(ckpt))
    kept = list(out.glob("results.json.replaced-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == before


def test_a_record_that_does_not_name_its_weights_is_recomputed(checkpoints, tmp_path):
    """A record written before records named their checkpoint: resume cannot trust it, so it recomputes and keeps
    the old record as results.json.previous-<time>."""
    out = tmp_path / "run"
    first = _run(checkpoints / "seed0", out)
    record = json.loads((out / "results.json").read_text())
    del record["checkpoint"]
    (out / "results.json").write_text(json.dumps(record))
    second = _run(checkpoints / "seed0", out)
    assert second["timings"] != first["timings"] and second["checkpoint"] == first["checkpoint"]
    assert len(list(out.glob("results.json.previous-*"))) == 1
