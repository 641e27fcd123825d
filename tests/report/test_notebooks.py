"""The notebooks execute top to bottom (nbclient, python3 kernel, tmp working dir) and ship without outputs."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def execute(name: str, cwd: Path, timeout: int) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            for mime in ("text/plain", "text/markdown"):
                parts.append(out.get("data", {}).get(mime, ""))
    return "\n".join(parts)


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", ["analysis.ipynb", "token_flow.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def _write_run(root: Path, sub: str, method: str, flops: float, acc: float) -> None:
    metrics = {"lambada_openai": {"perplexity": 20.0 - 10 * acc, "acc": acc}}
    for task in ("hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande"):
        metrics[task] = {"acc": acc, "acc_norm": acc}
    res = {"status": "complete", "task": "eval", "model": "mamba2-2.7b", "method": method, "target_flops": flops,
           "keep_ratio": 1.0 - flops / 3, "locations": [12, 17, 22, 27, 32, 37, 42], "metrics": metrics,
           "realised_flops_reduction": flops, "headline": acc,
           "config": {"reduction": {"method": method, "target_flops": flops}, "logger": {"group": "table1_mamba2"},
                      "eval": {"alignment": "exact"}}}
    (root / sub).mkdir(parents=True)
    (root / sub / "results.json").write_text(json.dumps(res))


def test_analysis_notebook_runs_on_a_sweep(tmp_path, monkeypatch):
    sweep = tmp_path / "multirun" / "table1_mamba2"
    _write_run(sweep, "none", "none", 0.0, 0.6)
    _write_run(sweep, "utrc10", "utrc", 0.1, 0.55)
    _write_run(sweep, "utrc20", "utrc", 0.2, 0.5)
    monkeypatch.setenv("TOR_EXP_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("TOR_EXP_REPORT_DIR", str(tmp_path / "report"))
    nb = execute("analysis.ipynb", tmp_path, timeout=240)
    text = outputs_text(nb)
    assert "3 complete runs" in text
    # the table: our avg 50.0 beside the paper's 58.7 for UTRC at 20 %, 60.0 beside 63.8 for the baseline
    assert "50.0 / 58.7" in text and "60.0 / 63.8" in text and "55.0 / 61.4" in text
    assert images(nb) == 3  # accuracy, ppl, custom LAMBADA-accuracy plot
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "lambada_acc_vs_flops.png").is_file()


@pytest.mark.slow  # ~13 s; CI's second step runs it
def test_token_flow_notebook_runs_on_the_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = execute("token_flow.ipynb", tmp_path, timeout=600)
    text = outputs_text(nb)
    for method in ("pumer", "evit", "ltmp", "utrc", "pumer_official", "evit_official", "utrc_official"):
        assert f"== {method}:" in text
    assert "pruned" in text and "→" in text
    assert images(nb) == 1
