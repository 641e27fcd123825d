"""Running the entry point in-process or as a real process, and checking its one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

FAST = ["model=tiny_mamba2", "eval=smoke", "eval.limit=2", "device=cpu"]
#: a job that runs until it is stopped: the prefill benchmark of the tiny model with a million repeats
ENDLESS = ["model=tiny_mamba2", "task=bench", "device=cpu", "bench.batch_sizes=[1]", "bench.seq_lens=[32]",
           "bench.flops_targets=[0.2]", "bench.warmup=0", "bench.repeats=1000000", "bench.plot=false"]


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``python -m tor_exp <args>`` in this process: (exit code, stdout, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    import tor_exp.__main__ as entry

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["tor_exp", *args])
    code = 0
    try:
        entry.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err: str) -> list[str]:
    """stderr without the scoring progress bars of work that ran before the end and without transformers' one
    note that the CUDA kernels are not installed (the benchmarks' model step prints it)."""
    return [line for line in err.strip().replace("\r", "\n").splitlines()
            if line.strip() and "tor_exp scoring" not in line and not line.startswith("[transformers]")]


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit 2 and, apart from the scoring progress bar of work that ran before the failure, one line."""
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def start(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    """``python -m tor_exp <args>`` as a real process; its stdout and stderr go to ``log``.out / ``log``.err."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tor_exp", *args], cwd=cwd, env=env,
                            stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"), text=True,
                            preexec_fn=_sigint_as_at_a_terminal)


def _sigint_as_at_a_terminal() -> None:
    """Ctrl-C's default for the child: a shell runs background jobs (``cmd &`` in a script, as a CI step may) with
    SIGINT ignored, the child inherits that, and Python then installs no KeyboardInterrupt handler at all."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 240.0) -> Path:
    """The first path below ``root`` matching ``pattern`` (glob), waiting while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern)) if root.exists() else []
        if found:
            return found[0]
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {pattern} appeared"
        time.sleep(0.1)
    raise AssertionError(f"{pattern} did not appear under {root} within {timeout} s")
