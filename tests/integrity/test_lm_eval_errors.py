"""lm-eval's command line through tor_exp (``python -m tor_exp.lm_eval``, console script ``tor-exp-lm-eval``) ends bad
``--model_args`` of ``--model tor_exp`` the way ``python -m tor_exp`` ends the same overrides: one line
``error: ...`` on stderr (the same line), exit code 2, no traceback — and before lm-eval indexes its tasks.

Each case runs the real command line in a subprocess, from a directory that is not the checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: --model_args → the same input as `python -m tor_exp` overrides (None: no main-CLI equivalent) and a needle
CASES = {
    "unknown_key": ("model=tiny_mamba2,reduction.bogus=1", ["model=tiny_mamba2", "reduction.bogus=1"],
                    "reduction.bogus"),
}
#: in the slow run only (CI's second step; ~8 s each): the in-process early-check tests below cover every case in
#: the default run, and the console-script test runs ``unreachable_target`` through the real command line
SLOW_CASES = {
    "unknown_model": ("model=doesnotexist", ["model=doesnotexist"], "doesnotexist"),
    "unreachable_target": ("model=tiny_mamba2,reduction.target_flops=0.99",
                           ["model=tiny_mamba2", "reduction.target_flops=0.99"], "reduction.target_flops=0.99"),
    "undotted_key": ("model=tiny_mamba2,bogus=1", None, "unknown key 'bogus'"),
}


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")


def _lm_eval_cli(command: list[str], model_args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*command, "--model", "tor_exp", "--model_args", model_args, "--tasks", "lambada_fixture",
                           "--batch_size", "2", "--output_path", str(cwd / "out")],
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess, needle: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert needle in lines[0], lines[0]
    output = Path(proc.args[proc.args.index("--output_path") + 1])
    assert not output.exists(), "nothing is written for a refused run"
    return lines[0]


def _main_cli_line(monkeypatch, capsys, overrides: list[str]) -> str:
    """``python -m tor_exp <overrides>``'s stderr for the same input (its entry point, in this process)."""
    from hydra.core.global_hydra import GlobalHydra

    import tor_exp.__main__ as entry

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["tor_exp", *overrides, "eval=smoke", "device=cpu"])
    with pytest.raises(SystemExit) as exited:
        entry.main()
    GlobalHydra.instance().clear()
    assert exited.value.code == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", [*sorted(CASES), *(pytest.param(c, marks=pytest.mark.slow) for c in SLOW_CASES)])
def test_bad_model_args_are_one_line_exit_2(case, tmp_path, monkeypatch, capsys):
    """One line, exit 2, the line ``python -m tor_exp`` prints for the same overrides (~6 s of CPU each: the
    interpreter, lm-eval and tor_exp imports; the check runs before lm-eval indexes its tasks)."""
    model_args, overrides, needle = {**CASES, **SLOW_CASES}[case]
    line = _one_error_line(_lm_eval_cli([sys.executable, "-m", "tor_exp.lm_eval"], model_args, tmp_path), needle)
    if overrides is not None:
        assert line == _main_cli_line(monkeypatch, capsys, overrides)


def test_console_script_is_one_line_exit_2(tmp_path):
    script = shutil.which("tor-exp-lm-eval")
    if script is None:
        pytest.skip("console script tor-exp-lm-eval is not installed (pip install -e .)")
    model_args, _, needle = SLOW_CASES["unreachable_target"]
    _one_error_line(_lm_eval_cli([script], model_args, tmp_path), needle)


@pytest.mark.parametrize("model_args", [
    {"model": "tiny_mamba2", "reduction.bogus": 1},
    {"model": "doesnotexist"},
    {"pretrained": "tiny_mamba2", "reduction": "utrc", "reduction.target_flops": 0.99},
    {"model": "tiny_mamba2", "bogus": 1, "max_length": 64, "trust_remote_code": True},
], ids=["unknown_key", "unknown_model", "unreachable_target", "undotted_key"])
def test_the_early_check_raises_what_the_backend_raises(model_args):
    """The command line's early check (before lm-eval's task index) and the backend lm-eval builds later refuse
    the same model_args with the same ConfigError (Python API: ``simple_evaluate(model="tor_exp", ...)``)."""
    from tor_exp.errors import ConfigError
    from tor_exp.lm_eval import TorExpByName, check_model_args

    with pytest.raises(ConfigError) as early:
        check_model_args(model_args)
    with pytest.raises(ConfigError) as backend:
        TorExpByName(**model_args, batch_size=2, device="cpu")
    assert str(early.value) == str(backend.value) and "\n" not in str(early.value)


def test_good_model_args_pass_the_early_check():
    from tor_exp.lm_eval import check_model_args

    check_model_args({"model": "tiny_mamba2", "reduction": None, "reduction.keep_ratio": 0.7, "max_length": 64,
                      "alignment": "exact", "trust_remote_code": True})
    check_model_args({"pretrained": object()})  # an in-memory model: the backend's to check
