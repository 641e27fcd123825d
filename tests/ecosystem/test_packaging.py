"""sdist → wheel built from that sdist → installed into a fresh venv apart from the checkout → a smoke eval and
the lm-eval command line from another directory (what a user of `pip install <sdist>` gets)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import site
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, clean_env, run

pytestmark = pytest.mark.slow  # ~1.5-3 min on 2 cores; .ci/run runs it (`pytest -m slow tests/ecosystem`)

# what a git checkout has and a working tree may hold besides (build outputs, runs, caches)
_NOT_SOURCE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", "outputs", "multirun",
                                     "wandb", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints", ".venv*")


def _sdist_then_wheel(src: Path, out: Path) -> tuple[Path, Path]:
    """`python -m build` (its default: the sdist, then the wheel from that sdist); without the `build` package
    the same two steps through the PEP 517 backend pyproject.toml names and pip building the sdist."""
    if importlib.util.find_spec("build") is not None:
        run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], cwd=src)
    else:
        run([sys.executable, "-c", "import sys, setuptools.build_meta as b; b.build_sdist(sys.argv[1])", out], cwd=src)
        (sdist,) = out.glob("*.tar.gz")
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
             "-w", out, sdist], cwd=out)
    (sdist,) = out.glob("tor_exp-*.tar.gz")
    (wheel,) = out.glob("tor_exp-*.whl")
    return sdist, wheel


def _fresh_venv(where: Path) -> Path:
    """A venv that sees this interpreter's installed packages (the dependencies) but not its editable tor_exp:
    site-packages is added as a plain path (.pth line), so the .pth files in it (the editable finder) never run."""
    run([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    python = where / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       cwd=where).stdout.strip())
    (purelib / "_tor_exp_test_deps.pth").write_text("".join(p + "\n" for p in site.getsitepackages()))
    return python


def test_wheel_built_from_the_sdist_runs_from_another_directory(tmp_path: Path) -> None:
    src = tmp_path / "checkout"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE)
    sdist, wheel = _sdist_then_wheel(src, tmp_path / "dist")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("/conf/config.yaml") for n in names) and any("/conf/model/" in n for n in names)
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
    for needed in ("tor_exp/conf/config.yaml", "tor_exp/conf/eval/zero_shot.yaml", "tor_exp/conf/model/tiny_mamba2.yaml",
                   "tor_exp/evaluation/tasks/piqa_fixture.jsonl", "tor_exp/evaluation/tasks/task_data.py",
                   "tor_exp/reference/task/reference_heldout.jsonl", "tor_exp/reference/assets/model.safetensors",
                   "tor_exp/reference/hybrid/model.safetensors", "tor_exp/conf/model/reference_hybrid.yaml",
                   "tor_exp/reference/gdn/model.safetensors", "tor_exp/conf/model/reference_gdn.yaml",
                   "tor_exp/lm_eval/__main__.py"):
        assert needed in files, needed

    python = _fresh_venv(tmp_path / "venv")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env()
    where = run([python, "-c", "import tor_exp, tor_exp.config as c; print(tor_exp.__file__); print(c.config_dir())"],
                cwd=elsewhere, env=env).stdout.split()
    assert all(Path(p).is_relative_to(tmp_path / "venv") for p in where), where  # the wheel, not the checkout

    out = tmp_path / "run"
    run([python, "-m", "tor_exp", "model=tiny_mamba2", "eval=smoke", "eval.limit=2", f"hydra.run.dir={out}"],
        cwd=elsewhere, env=env)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["model"] == "tiny_mamba2" and results["method"] == "utrc"
    assert sorted(results["metrics"]) == ["lambada_fixture", "piqa_fixture"]
    assert 0.0 <= results["metrics"]["piqa_fixture"]["acc"] <= 1.0
    assert results["metrics"]["lambada_fixture"]["perplexity"] > 1.0
    assert results["versions"]["tor_exp"] == "0.1.0"
    # a shipped trained model from the wheel's own files (the Gated DeltaNet reference), offline, elsewhere
    out = tmp_path / "run_gdn"
    run([python, "-m", "tor_exp", "model=reference_gdn", "eval.limit=2", f"hydra.run.dir={out}"], cwd=elsewhere,
        env=env)
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "reference_gdn" and Path(results["checkpoint"]["path"]).is_relative_to(tmp_path / "venv")
    assert results["baseline"]["metrics"]["reference_heldout"]["bits_per_byte"] < 3.0

    # the console script of the wheel: lm-eval's command line, a bundled task by name
    cli_out = tmp_path / "lm_eval_out"
    proc = run([python.parent / "tor-exp-lm-eval", "--model", "tor_exp", "--model_args",
                "model=tiny_mamba2,reduction=none", "--tasks", "piqa_fixture", "--limit", "2", "--batch_size", "2",
                "--output_path", cli_out], cwd=elsewhere, env=env)
    assert "piqa_fixture" in proc.stdout
    (record,) = cli_out.rglob("results_*.json")
    assert json.loads(record.read_text())["results"]["piqa_fixture"]["acc,none"] in (0.0, 0.5, 1.0)
