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


# ------------------------------------------------------------------ the command line's own arguments (issue 29)
def _parsed(monkeypatch, *args: str):
    """lm-eval's command line parsed as ``python -m tor_exp.lm_eval`` parses it (no logging set up, nothing run)."""
    from lm_eval._cli import HarnessCLI

    monkeypatch.setattr(sys, "argv", ["tor-exp-lm-eval", "--model", "tor_exp", "--model_args", "model=tiny_mamba2",
                                      "--tasks", "lambada_fixture", *args])
    return HarnessCLI().parse_args()


@pytest.mark.parametrize("args, needle", [
    (["--limit", "0"], "--limit=0.0: must be > 0"),
    (["--limit", "-3"], "--limit=-3.0: must be > 0"),
    (["--log_samples"], "--log_samples: needs --output_path"),
    (["--predict_only"], "--predict_only: needs --output_path"),
    (["--output_path", "{file}"], "is a file, not a folder"),
    (["--output_path", "{file}/sub/results.json"], "cannot write the results there"),
], ids=["limit_0", "limit_negative", "log_samples", "predict_only", "output_is_a_file", "output_below_a_file"])
def test_bad_command_line_arguments_are_refused_before_lm_eval_reads_them(args, needle, tmp_path, monkeypatch):
    """What lm-eval leaves to a traceback (--limit 0, --log_samples without --output_path) or to one buried warning
    after the whole run (an unwritable --output_path) is a one-line ConfigError when lm-eval builds its config."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    from tor_exp.errors import ConfigError
    from tor_exp.lm_eval import cli_args_checked_early

    afile = tmp_path / "afile"
    afile.write_text("keep")
    namespace = _parsed(monkeypatch, *(a.replace("{file}", str(afile)) for a in args))
    with cli_args_checked_early(), pytest.raises(ConfigError) as refused:
        EvaluatorConfig.from_cli(namespace)
    assert needle in str(refused.value) and "\n" not in str(refused.value)
    if "--output_path" in args:
        assert str(refused.value).startswith(f"--output_path={afile}")
    assert afile.read_text() == "keep"
    # outside the context lm-eval's own behaviour is back (no check of ours)
    if args[0] == "--output_path":
        EvaluatorConfig.from_cli(_parsed(monkeypatch, *(a.replace("{file}", str(afile)) for a in args)))


def test_an_unwritable_output_path_is_refused_and_a_good_one_left_untouched(tmp_path, monkeypatch):
    """A read-only output folder (permission bits where they bind, else the probe write itself refused, as for
    root on a read-only mount) is refused; a writable one passes and no folder is left behind by the check."""
    import errno
    import tempfile

    from lm_eval.config.evaluate_config import EvaluatorConfig

    from tor_exp.errors import ConfigError
    from tor_exp.lm_eval import cli_args_checked_early

    good = tmp_path / "new" / "out"
    with cli_args_checked_early():
        config = EvaluatorConfig.from_cli(_parsed(monkeypatch, "--output_path", str(good), "--limit", "0.5"))
    assert config.output_path == str(good) and not (tmp_path / "new").exists()
    readonly = tmp_path / "ro"
    readonly.mkdir(mode=0o555)
    if os.access(readonly, os.W_OK):  # root: permission bits do not bind

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with cli_args_checked_early(), pytest.raises(ConfigError, match=r"--output_path=.*/ro/out: .*Permission denied"):
        EvaluatorConfig.from_cli(_parsed(monkeypatch, "--output_path", str(readonly / "out")))
    assert not (readonly / "out").exists()


def test_a_hub_dataset_offline_is_one_line_naming_the_task(monkeypatch):
    """A task whose dataset is on the Hub, built offline (HF_DATASETS_OFFLINE=1 here): one ConfigError line that
    names the task and says the Hub is unreachable (lm-eval raises ConnectionError from deep in `datasets`)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    from tor_exp.errors import ConfigError
    from tor_exp.lm_eval import cli_args_checked_early

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    config = {"task": "hub_only_task", "dataset_path": "EleutherAI/no_such_dataset_offline", "output_type":
              "loglikelihood", "test_split": "test", "doc_to_text": "{{text}}", "doc_to_target": "{{text}}"}
    with cli_args_checked_early(), pytest.raises(ConfigError) as refused:
        ConfigurableTask(config=config)
    line = str(refused.value)
    assert line.startswith("--tasks hub_only_task: its dataset 'EleutherAI/no_such_dataset_offline' is on the "
                           "Hugging Face Hub, which is unreachable (HF_DATASETS_OFFLINE=1 is set)"), line
    assert "\n" not in line
    with pytest.raises(ConnectionError):  # lm-eval's own behaviour outside the context
        ConfigurableTask(config=config)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tor_exp.lm_eval", "--model", "tor_exp", "--model_args",
                           "model=tiny_mamba2", "--batch_size", "2", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _ends_with_one_error_line(proc: subprocess.CompletedProcess, needle: str) -> str:
    """Exit 2, no traceback, the last stderr line is the error (lm-eval may have logged its progress before)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and needle in lines[-1], proc.stderr[-3000:]
    return lines[-1]


@pytest.mark.slow
@pytest.mark.parametrize("args, needle, alone", [
    (["--tasks", "lambada_fixture", "--limit", "0"], "error: --limit=0.0: must be > 0", True),
    (["--tasks", "lambada_fixture", "--log_samples"], "error: --log_samples: needs --output_path", True),
    (["--tasks", "lambada_fixture", "--output_path", "{file}"], "error: --output_path={file}: cannot write", True),
    (["--tasks", "nosuchtask,lambada_fixture"], "error: --tasks: unknown task(s) nosuchtask", False),
    (["--tasks", "lambada_openai", "--limit", "2"],
     "error: --tasks lambada_openai: its dataset 'EleutherAI/lambada_openai' is on the Hugging Face Hub, which is "
     "unreachable", False),
], ids=["limit_0", "log_samples", "unwritable_output", "unknown_task", "hub_task_offline"])
def test_command_line_argument_errors_end_with_one_line(args, needle, alone, tmp_path):
    """The real command line (~10 s each: the unknown task and the hub task need lm-eval's task index): exit 2, one
    `error:` line, no traceback; the cheap checks come before lm-eval logs anything (the line is all of stderr)."""
    afile = tmp_path / "afile"
    afile.write_text("keep")
    proc = _cli([a.replace("{file}", str(afile)) for a in args], tmp_path)
    line = _ends_with_one_error_line(proc, needle.replace("{file}", str(afile)))
    if alone:
        assert [l for l in proc.stderr.splitlines() if l.strip()] == [line]
    assert afile.read_text() == "keep"
