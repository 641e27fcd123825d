"""The quality document's agreement section over every model of a sweep: the N-way verdict per cell, the summary
counts, the list of resolved disagreements and the paper-mode methods' order per model, on hand-set intervals whose
verdicts are known by construction (no bootstrap), plus one small end-to-end run of ``write_quality``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

KEY = "t/acc"


def iv(delta: float, half: float) -> dict[str, Any]:
    """A paired difference with a hand-set interval: resolved iff ``half < |delta|``."""
    return {"delta": delta, "low": delta - half, "high": delta + half, "n": 10, "iters": 50, "level": 0.95}


def row(method: str, target: Optional[float], vs_none: Optional[dict] = None,
        vs_utrc: Optional[dict] = None) -> dict[str, Any]:
    return {"method": method, "target": target, "keep_ratio": None, "realised": target, "values": {KEY: 0.5},
            "vs_none": {KEY: vs_none} if vs_none else {}, "vs_utrc": {KEY: vs_utrc} if vs_utrc else {},
            "offset_rule": {}}


def three_models() -> dict[str, list[dict[str, Any]]]:
    """Models A, B, C. At 20 %: utrc resolved + on all; evit resolved on none (vs none) and − on all (vs UTRC);
    pumer + on A and C only; ltmp + on A, − on C (vs none) and + on B only (vs UTRC); utrc_official (a parity
    mode) on A and B; only_a on A alone. At 10 %: utrc and evit, in the same order on all."""
    def model(none_20: dict[str, dict], utrc_20: dict[str, dict]) -> list[dict[str, Any]]:
        rows = [row("none", None), row("utrc", 0.1, iv(0.10, 0.05)), row("evit", 0.1, iv(0.01, 0.05), iv(-0.09, 0.2)),
                row("utrc", 0.2, none_20["utrc"])]
        rows += [row(m, 0.2, none_20[m], utrc_20[m]) for m in ("evit", "pumer", "ltmp")]
        return rows

    a = model({"utrc": iv(0.30, 0.1), "evit": iv(0.05, 0.1), "pumer": iv(0.20, 0.1), "ltmp": iv(0.40, 0.1)},
              {"evit": iv(-0.25, 0.1), "pumer": iv(-0.10, 0.2), "ltmp": iv(0.10, 0.2)})
    b = model({"utrc": iv(0.25, 0.1), "evit": iv(0.02, 0.1), "pumer": iv(0.08, 0.1), "ltmp": iv(0.35, 0.5)},
              {"evit": iv(-0.23, 0.1), "pumer": iv(-0.17, 0.2), "ltmp": iv(0.10, 0.05)})
    c = model({"utrc": iv(0.30, 0.1), "evit": iv(-0.02, 0.1), "pumer": iv(0.50, 0.1), "ltmp": iv(-0.30, 0.1)},
              {"evit": iv(-0.32, 0.1), "pumer": iv(0.20, 0.3), "ltmp": iv(-0.60, 0.7)})
    a += [row("utrc_official", 0.2, iv(0.3, 0.1), iv(0.0, 0.1)), row("only_a", 0.2, iv(0.5, 0.1), iv(0.5, 0.1))]
    b += [row("utrc_official", 0.2, iv(0.2, 0.1))]
    return {"A": a, "B": b, "C": c}


def test_the_verdict_over_n_models():
    from tor_exp.reporting.quality import verdict, verdict_kind

    up, down, zero = iv(0.2, 0.1), iv(-0.2, 0.1), iv(0.0, 0.1)
    assert verdict({"a": up, "b": up, "c": up}) == "agree (all resolved)"
    assert verdict({"a": down, "b": down}) == "agree (all resolved)"
    assert verdict({"a": zero, "b": zero, "c": zero}) == "agree (none resolved)"
    assert verdict({"a": up, "b": zero, "c": up}) == "same sign where resolved (2 of 3)"
    assert verdict({"a": zero, "b": down, "c": zero, "d": zero}) == "same sign where resolved (1 of 4)"
    assert verdict({"a": up, "b": zero, "c": down, "d": up}) == "**disagree** (+ `a`, `d`; − `c`)"
    # a model without the cell is left out; fewer than two with it: nothing to compare
    assert verdict({"a": up, "b": None, "c": up}) == "agree (all resolved)"
    assert verdict({"a": up, "b": None}) == verdict({}) == "–"
    assert verdict_kind("same sign where resolved (2 of 3)") == "same sign where resolved"
    assert verdict_kind("**disagree** (+ `a`; − `c`)") == "**disagree**"


def test_every_cell_of_three_models_gets_its_verdict():
    from tor_exp.reporting.quality import agreement_cells

    cells = {(c["method"], c["target"]): c for c in agreement_cells(three_models())}
    assert set(cells) == {("utrc", 0.1), ("evit", 0.1), ("utrc", 0.2), ("evit", 0.2), ("pumer", 0.2), ("ltmp", 0.2),
                          ("utrc_official", 0.2)}  # `none` and only_a (one model) have no cell
    expected = {("utrc", 0.1): ("agree (all resolved)", "–"),
                ("evit", 0.1): ("agree (none resolved)", "agree (none resolved)"),
                ("utrc", 0.2): ("agree (all resolved)", "–"),
                ("evit", 0.2): ("agree (none resolved)", "agree (all resolved)"),
                ("pumer", 0.2): ("same sign where resolved (2 of 3)", "agree (none resolved)"),
                ("ltmp", 0.2): ("**disagree** (+ `A`; − `C`)", "same sign where resolved (1 of 3)"),
                ("utrc_official", 0.2): ("agree (all resolved)", "–")}  # vs UTRC on A only: nothing to compare
    assert {k: (c["verdict_none"], c["verdict_utrc"]) for k, c in cells.items()} == expected
    assert cells[("utrc_official", 0.2)]["vs_none"]["C"] is None


def test_the_summary_counts_verdicts_lists_disagreements_and_compares_orders():
    from tor_exp.reporting.quality import agreement_summary, method_orders

    orders = {o["target"]: o for o in method_orders(three_models())}
    assert orders[0.2]["methods"] == ["evit", "ltmp", "pumer", "utrc"]  # parity modes and one-model methods left out
    assert orders[0.2]["order"] == {"A": "evit < pumer < utrc < ltmp", "B": "evit < pumer < utrc < ltmp",
                                    "C": "ltmp < evit < utrc < pumer"}
    assert not orders[0.2]["same"] and orders[0.1]["same"]
    assert orders[0.1]["order"]["A"] == "evit < utrc"
    lines = agreement_summary(three_models())
    assert lines[0] == ("- Δ vs none: 7 cells: 3 agree (all resolved), 2 agree (none resolved), "
                        "1 same sign where resolved, 1 **disagree**.")
    assert lines[1] == ("- Δ vs UTRC: 4 cells: 1 agree (all resolved), 2 agree (none resolved), "
                        "1 same sign where resolved.")
    assert lines[2] == "- Resolved disagreements: 1:"
    assert lines[3] == "  - t/acc, ltmp at 20 %, vs none: **disagree** (+ `A`; − `C`)"
    assert lines[4] == ("- Order of the paper-mode methods by Δ vs none: the same on every model in 1 of 2 "
                        "(task/metric, target) groups; different in t/acc at 20 %.")
    assert "resolved with the same sign on every model: t/acc at 20 %: evit < utrc on all." in lines[5]
    assert "No relation to UTRC is resolved with opposite signs" in lines[5]


def test_a_relation_to_utrc_resolved_both_ways_is_reported_as_an_order_conflict():
    from tor_exp.reporting.quality import agreement_summary, render_agreement

    models = three_models()
    evit_c = next(r for r in models["C"] if (r["method"], r["target"]) == ("evit", 0.2))
    evit_c["vs_utrc"][KEY] = iv(0.3, 0.1)  # evit at 20 % above UTRC on C, below it on A and B
    lines = agreement_summary(models)
    assert "  - t/acc, evit at 20 %, vs UTRC: **disagree** (+ `C`; − `A`, `B`)" in lines
    assert "1 relation(s) to UTRC resolved with opposite signs on two models" in lines[-1]
    text = render_agreement(models)
    assert "| 20 % | evit < pumer < utrc < ltmp | evit < pumer < utrc < ltmp | ltmp < evit < utrc < pumer | no | " \
           "evit vs utrc: **disagree** (> on `C`; < on `A`, `B`); ltmp > utrc on `B` |" in text


def test_the_agreement_section_has_a_column_per_model_in_the_given_order():
    from tor_exp.reporting.quality import render_agreement

    models = three_models()
    text = render_agreement({m: models[m] for m in ("C", "A", "B")})
    assert text.startswith("## Do the three architectures agree? (`C`, `A`, `B`)")
    assert text.index("### Summary") < text.index("### Order of the paper-mode methods") < text.index("### t: acc")
    assert ("| method | target | Δ vs none `C` | Δ vs none `A` | Δ vs none `B` | vs none | Δ vs UTRC `C` | "
            "Δ vs UTRC `A` | Δ vs UTRC `B` | vs UTRC |") in text
    assert ("| pumer | 20 % | +0.500 [+0.400, +0.600] **\\*** | +0.200 [+0.100, +0.300] **\\*** | "
            "+0.080 [-0.020, +0.180] | same sign where resolved (2 of 3) |") in text
    assert "| utrc_official | 20 % | – | +0.300 [+0.200, +0.400] **\\*** |" in text
    assert "| only_a |" not in text


def test_two_models_still_compare_and_the_pairwise_agreement_is_unchanged():
    from tor_exp.reporting.quality import agreement, agreement_summary, render_agreement

    models = three_models()
    two = {"A": models["A"], "C": models["C"]}
    text = render_agreement(two)
    assert text.startswith("## Do the two architectures agree? (`A`, `C`)")
    assert "| ltmp | 20 % |" in text and "**disagree** (+ `A`; − `C`) |" in text
    # pumer is resolved + on both A and C; utrc_official is on A only (no cell)
    assert agreement_summary(two)[0] == ("- Δ vs none: 6 cells: 3 agree (all resolved), 2 agree (none resolved), "
                                         "1 **disagree**.")
    assert agreement(iv(0.2, 0.1), iv(0.3, 0.1)) == "agree"
    assert agreement(iv(0.2, 0.1), iv(0.0, 0.1)) == "only first resolved"
    assert agreement(iv(0.2, 0.1), iv(-0.2, 0.1)) == "**disagree**"


def _fake_job(folder: Path, model: str, method: str, target: Optional[float], correct: list[int]) -> dict[str, Any]:
    """A results.json-like record of one job with its lm-eval per-document samples file (task t, metric acc)."""
    folder.mkdir(parents=True)
    (folder / "t.jsonl").write_text("".join(json.dumps({"doc_id": i, "acc": float(c)}) + "\n"
                                            for i, c in enumerate(correct)))
    return {"_path": str(folder), "model": model, "method": method, "target_flops": target,
            "realised_flops_reduction": target or 0.0, "metrics": {"t": {"acc": sum(correct) / len(correct)}},
            "aggregations": {"t": {"acc": "mean"}}, "samples": {method: {"t": "t.jsonl"}}}


def test_write_quality_orders_models_by_name_whatever_the_records_order(tmp_path):
    """Three models given in a scrambled order: the sections, the plots and the agreement columns come sorted by
    model name. utrc loses 10 of 20 documents on every model (Δ −0.5, resolved), evit none (Δ 0, unresolved)."""
    from tor_exp.reporting.quality import write_quality

    records = []
    for model in ("zeta", "alpha", "mid"):
        for method, target, correct in (("evit", 0.2, [1] * 20), ("none", None, [1] * 20),
                                        ("utrc", 0.2, [1, 0] * 10)):
            records.append(_fake_job(tmp_path / "runs" / model / method, model, method, target, correct))
    paths = write_quality(records, tmp_path / "q", title="t", iters=50)
    text = paths["markdown"].read_text()
    assert text.index("## Model `alpha`") < text.index("## Model `mid`") < text.index("## Model `zeta`")
    assert "## Do the three architectures agree? (`alpha`, `mid`, `zeta`)" in text
    assert {p.name for p in tmp_path.glob("q*.png")} == {"q.png", "q.mid.png", "q.zeta.png"}
    assert list(json.loads(paths["json"].read_text())["models"]) == ["alpha", "mid", "zeta"]
    assert "- Δ vs none: 2 cells: 1 agree (all resolved), 1 agree (none resolved)." in text
    assert "- Δ vs UTRC: 1 cells: 1 agree (all resolved)." in text
    assert "| 20 % | utrc < evit | utrc < evit | utrc < evit | yes | evit > utrc on all |" in text


def test_a_metric_the_first_model_lacks_is_still_compared_on_the_others():
    """A reports only u/acc, B and C only t/acc: t/acc is compared on B and C (A's columns empty), u/acc on no one."""
    from tor_exp.reporting.quality import agreement_cells, render_agreement

    models = three_models()
    for r in models["A"]:
        r["values"] = {"u/acc": 0.5}
        r["vs_none"] = {"u/acc": v for v in r["vs_none"].values()}
        r["vs_utrc"] = {}
    cells = {(c["key"], c["method"], c["target"]): c for c in agreement_cells(models)}
    assert {k[0] for k in cells} == {KEY}
    ltmp = cells[(KEY, "ltmp", 0.2)]  # + on A no longer counts; B unresolved, C resolved −
    assert ltmp["vs_none"]["A"] is None and ltmp["verdict_none"] == "same sign where resolved (1 of 2)"
    text = render_agreement(models)
    assert "### t: acc" in text and "### u: acc" not in text
