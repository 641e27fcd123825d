"""The recurrent families tor_exp refuses (RecurrentGemma, xLSTM, RWKV-4, MiniMax): a ``model.family`` value or a
checkpoint whose config.json names one is a one-line ``error: model family <name>: <why>`` with exit status 2,
and each is listed in docs/families.md with its reason."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tor_exp.errors import ConfigError
from tor_exp.models.refusals import REFUSED

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_family_is_a_one_line_error_by_name_and_by_config_json(compose, name, tmp_path):
    with pytest.raises(ConfigError, match=rf"^model family {name}: .+ \(docs/families.md\)$"):
        compose("model=tiny_mamba2", f"model.family={name}")
    (model_type,), _ = REFUSED[name]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ConfigError, match=rf"^model family {name}: "):  # read from config.json while validating
        compose("model=local", f"model.path={tmp_path}", "reduction=none")
    assert f"`{name}`" in (ROOT / "docs" / "families.md").read_text()


def test_the_cli_refuses_a_checkpoint_of_a_refused_family_with_exit_2(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "recurrent_gemma"}))
    proc = subprocess.run([sys.executable, "-m", "tor_exp", "model=local", f"model.path={tmp_path / 'ckpt'}",
                           "eval=smoke", f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [line for line in proc.stderr.splitlines() if "model family" in line]
    assert len(errors) == 1 and errors[0].startswith("error: model family recurrent_gemma: its RG-LRU")
    assert "Traceback" not in proc.stderr
