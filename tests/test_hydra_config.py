"""Every config file composes and validates; bad overrides fail with one line naming the key."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tor_exp.config import compose_dict, config_dir, validate
from tor_exp.errors import ConfigError

CONF = Path(config_dir())
REPO = CONF.parent


def _compose(overrides: list[str]):
    return compose_dict(overrides)


def _group_files(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "reduction", "eval", "bench", "logger"])
def test_every_group_file_composes_and_validates(group: str) -> None:
    names = _group_files(group)
    assert names, f"conf/{group}/ is empty"
    for name in names:
        # model=local is "any saved checkpoint": it needs model.path (the shipped reference model is one)
        needs = ["model.path=pkg://tor_exp/reference/assets"] if (group, name) == ("model", "local") else []
        cfg = _compose([f"{group}={name}", *needs])
        validated = validate(cfg)
        assert getattr(validated, group) is not None
    if group == "model":
        with pytest.raises(Exception, match="model.path"):
            validate(_compose(["model=local"]))


def test_launchers_are_selectable_and_not_selected_by_default(compose) -> None:
    default = compose.dict(hydra=True)
    assert "submitit" not in str(default.hydra.launcher.get("_target_", ""))
    for name, target in (("local", "LocalLauncher"), ("slurm", "SlurmLauncher")):
        cfg = compose.dict(f"launcher={name}", hydra=True)
        assert cfg.hydra.launcher._target_.endswith(target)


def test_default_config_is_utrc_at_20_percent_on_the_embedded_model() -> None:
    cfg = _compose([])
    assert cfg.task == "eval"
    assert cfg.reduction.method == "utrc"
    assert cfg.reduction.target_flops == pytest.approx(0.2)
    assert cfg.model.name == "reference"
    assert cfg.eval.compare_baseline is True


def test_user_example_override_composes() -> None:
    cfg = _compose(["model=mamba2_2.7b", "reduction.q=0.5"])
    v = validate(cfg)
    assert v.reduction.q == 0.5
    assert v.model.n_layer == 64


@pytest.mark.parametrize(
    "override, key",
    [
        (["reduction.q=1.5"], "reduction.q"),
        (["reduction.target_flops=1.0"], "reduction.target_flops"),
        (["reduction.metric=l3"], "reduction.metric"),
        (["task=train"], "task"),
        (["model=tiny_mamba2", "reduction.locations=[2,99]"], "reduction.locations"),
        (["eval.alignment=sideways"], "eval.alignment"),
        (["bench.kind=fast"], "bench.kind"),
        (["logger=wandb", "logger.mode=sometimes"], "logger.mode"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(override: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(_compose(override))
    assert key in str(err.value)


def test_unknown_key_is_rejected_naming_it() -> None:
    with pytest.raises(Exception) as err:
        _compose(["reduction.nonexistent=1"])
    assert "nonexistent" in str(err.value)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="")
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run([sys.executable, "-m", "tor_exp", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        # one of each failure kind (each CLI start costs seconds); value checks of every key are tested in-process
        (("reduction.q=1.5",), "reduction.q"),  # value check in a schema's __post_init__
        (("reduction.q=abc",), "reduction.q"),  # type check by the structured config
        (("model=nope",), "model"),  # unknown config group option
    ],
)
def test_cli_bad_override_is_one_line_without_traceback(args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    proc = _cli(*args, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()
