"""``launchers/gpu_bench.py --scale cpu`` runs every preset as one ordinary job (tor_exp.run.run) on random weights
of a checkpoint's shape, here a tiny Mamba-2 folder holding config.json only (so no weight file can be read)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tor_exp.models import ModelConfig, TinyModelConfig, load_model

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("prefill", "overhead", "generate", "memory")


def test_gpu_bench_cpu_scale_runs_every_preset_as_a_job(tmp_path):
    shape = tmp_path / "shape"
    shape.mkdir()
    cfg = ModelConfig(name="t", family="mamba2", n_layer=6, locations=[1, 3],
                      tiny=TinyModelConfig(d_model=32, n_layer=6, chunk_size=16, head_dim=16, state_size=8))
    (shape / "config.json").write_text(load_model(cfg)[0].config.to_json_string())
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(ROOT / "launchers" / "gpu_bench.py"), "--scale", "cpu", "--device",
                           "cpu", "--model", str(shape), "--override", "model.family=mamba2", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == {p: "ok" for p in PRESETS}
    merged = {}
    for preset in PRESETS:
        record = json.loads((out / preset / "results.json").read_text())
        assert (record["task"], record["status"], record["bench"]["kind"]) == ("bench", "complete", preset)
        assert record["config"]["model"]["source"] == "random" and record["config"]["bench"]["kind"] == preset
        assert record["checkpoint"]["weights"] == "random" and list(record["checkpoint"]["files"]) == ["config.json"]
        assert (out / preset / f"bench_{preset}.md").read_text().strip() == record["bench"]["markdown"]
        assert [r["variant"] for r in record["bench"]["rows"]][:2] == ["none", "utrc@10%"]
        merged.update(record["bench_summary"])
    assert summary["summary"] == merged and "prefill.f30.speedup" in merged
    text = (out / "summary.md").read_text()
    assert all(f"### {preset}" in text for preset in PRESETS) and "random weights" in text
