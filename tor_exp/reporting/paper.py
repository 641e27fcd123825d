"""The paper's published numbers (Tables 1–6, typed into ``paper_results.json``) and matching runs to them.

A run matches a paper row when model, method (a parity mode → the paper method it reproduces), FLOPs target and
every design choice the paper varies (importance metric, locations, hidden / residual strategy and q) agree.
Design keys a paper row leaves out take the paper's defaults (clip, the model's paper locations, hybrid q=0.5 /
merge), so e.g. a Table 3 ``l1`` run never picks up Table 1's ``clip`` numbers.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

PAPER_FILE = Path(__file__).with_name("paper_results.json")
#: search order when no table is preferred: main tables first, then the appendix and the ablations
TABLE_ORDER = ("table1", "table2", "table6", "table3", "table4", "table5")
#: the six accuracy columns whose mean is the paper's "Avg."
ACC_COLUMNS = ("lambada_acc", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")
COLUMNS = ("lambada_ppl",) + ACC_COLUMNS + ("avg",)


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_paper_results(path: str | Path | None = None) -> dict[str, Any]:
    """The data file as a dict (cached; do not mutate)."""
    return _load(str(path or PAPER_FILE))


def canonical_model(name: Any) -> str:
    """Model config names (``mamba2-2.7b``, ``mamba-2.8b-hf``) → the data file's keys (``mamba2_2.7b``)."""
    key = str(name).lower().strip()
    if key.endswith("-hf"):
        key = key[: -len("-hf")]
    return key.replace("-", "_")


def paper_method(method: str) -> str:
    """Parity-mode methods are compared with the paper row of the method they reproduce (looked up in the
    method registry: :func:`tor_exp.reduction.parity.paper_method`)."""
    from tor_exp.reduction.parity import paper_method as reproduced

    return reproduced(method)


def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), abs_tol=tol)


def _design(row: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Design choices the paper varies, with the paper's defaults filled in; q only where a stream is hybrid."""
    d = {k: row.get(k, defaults[k]) for k in ("metric", "hidden", "residual")}
    d["q"] = float(row.get("q", defaults["q"])) if d["hidden"] == "hybrid" else None
    d["residual_q"] = float(row.get("residual_q", defaults["q"])) if d["residual"] == "hybrid" else None
    return d


def run_matches(paper_row: dict[str, Any], run: dict[str, Any], data: dict[str, Any]) -> bool:
    """``run``: model, method, target_flops, locations and (optional) metric/hidden/q/residual/residual_q."""
    if paper_row["model"] != canonical_model(run.get("model")):
        return False
    method = paper_method(str(run.get("method")))
    if paper_row["method"] != method:
        return False
    if method == "none":
        return True
    if not _close(paper_row["target_flops"], run.get("target_flops")):
        return False
    default_locations = data["paper_locations"].get(paper_row["model"])
    if list(paper_row.get("locations", default_locations) or []) != list(run.get("locations") or []):
        return False
    if method == "utrc":
        defaults = data["utrc_defaults"]
        ours = {k: run[k] for k in ("metric", "hidden", "q", "residual", "residual_q") if run.get(k) is not None}
        mine, theirs = _design(ours, defaults), _design(paper_row, defaults)
        for key, value in theirs.items():
            other = mine[key]
            if isinstance(value, float) or isinstance(other, float):
                if not _close(value, other):
                    return False
            elif value != other:
                return False
    return True


def find_paper_row(run: dict[str, Any], prefer: Optional[str | list[str]] = None,
                   data: Optional[dict[str, Any]] = None) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """(table id, paper row) for a run, searching ``prefer`` first, then :data:`TABLE_ORDER`; (None, None) if none."""
    data = data or load_paper_results()
    preferred = [prefer] if isinstance(prefer, str) else list(prefer or [])
    order = [t for t in preferred if t in data["tables"]] + [t for t in TABLE_ORDER if t not in preferred]
    for table in order:
        for row in data["tables"][table]["rows"]:
            if run_matches(row, run, data):
                return table, row
    return None, None


def paper_values(row: Optional[dict[str, Any]]) -> dict[str, Optional[float]]:
    """The table columns of a paper row (None where the table does not print that column)."""
    return {c: (None if row is None else row.get(c)) for c in COLUMNS}


def table_for_experiment(name: Optional[str]) -> Optional[str]:
    """``table3_metric`` → ``table3``; ``parity`` → ``table1`` (the grid it reruns); else None."""
    if not name:
        return None
    if name.startswith("parity"):
        return "table1"
    head = name.split("_", 1)[0]
    return head if head in TABLE_ORDER else None
