"""Offline report: table values equal results.json, paper column equals the data file, plots, W&B spec."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tor_exp.report import build_report, build_wandb_report_spec, main, render_markdown
from tor_exp.reporting.collect import collect_rows, load_sweep, paper_columns, results_from_wandb, task_column
from tor_exp.reporting.paper import PAPER_FILE, find_paper_row, load_paper_results
from tor_exp.reporting.plots import series

PAPER_TASKS = ("lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")
L64 = [12, 17, 22, 27, 32, 37, 42]


def fake_metrics(seed: float) -> dict:
    """lm-eval-shaped metrics; acc and acc_norm differ so the per-task metric choice is visible."""
    m = {"lambada_openai": {"perplexity": 10.0 + seed, "perplexity_stderr": 0.5, "acc": 0.60 - seed / 100,
                            "acc_stderr": 0.01}}
    for i, task in enumerate(PAPER_TASKS[1:]):
        m[task] = {"acc": 0.50 + i / 100 - seed / 200, "acc_stderr": 0.01, "acc_norm": 0.55 + i / 100 - seed / 300,
                   "acc_norm_stderr": 0.01}
    return m


def write_run(root: Path, sub: str, *, model="mamba2-2.7b", method="utrc", flops=0.2, group="table1_mamba2",
              metrics=None, status="complete", locations=L64, **reduction) -> dict:
    red = {"method": method, "target_flops": flops, "keep_ratio": None, "metric": "clip", "hidden": "hybrid",
           "q": 0.5, "residual": "merge", "residual_q": 0.5, **reduction}
    res = {"status": status, "task": "eval", "model": model, "method": method, "target_flops": flops,
           "keep_ratio": 1.0 if method == "none" else 0.94, "locations": locations,
           "metrics": metrics if metrics is not None else fake_metrics(flops * 10),
           "flops_per_task": {t: 0.9 * flops for t in PAPER_TASKS}, "realised_flops_reduction": 0.9 * flops,
           "config": {"reduction": red, "model": {"name": model}, "eval": {"alignment": "exact"},
                      "logger": {"group": group}, "task": "eval"}}
    d = root / sub
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(res))
    return res


def parse_table(markdown: str) -> list[dict[str, str]]:
    lines = [l for l in markdown.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def split_cell(cell: str) -> tuple[float | None, float | None]:
    ours, paper = (x.strip() for x in cell.split(" / "))
    return (None if ours == "–" else float(ours)), (None if paper == "–" else float(paper))


# ----------------------------------------------------------------------------------------------- mapping
def test_task_names_map_to_paper_columns():
    assert task_column("lambada_openai") == "lambada"
    assert task_column("lambada_fixture") == "lambada"
    assert task_column("lambada_standard") == "lambada"
    assert task_column("hellaswag_fixture") == "hellaswag"
    assert task_column("arc_challenge") == "arc_challenge"
    assert task_column("winogrande_fixture") == "winogrande"
    assert task_column("mmlu") is None


def test_paper_columns_use_the_mamba_metric_convention():
    m = fake_metrics(0.0)
    cols = paper_columns(m)
    assert cols["lambada_ppl"] == 10.0
    assert cols["lambada_acc"] == pytest.approx(60.0)
    assert cols["hellaswag"] == pytest.approx(55.0)          # acc_norm
    assert cols["piqa"] == pytest.approx(51.0)               # acc, although acc_norm is reported
    assert cols["arc_easy"] == pytest.approx(52.0)           # acc
    assert cols["arc_challenge"] == pytest.approx(58.0)      # acc_norm
    assert cols["winogrande"] == pytest.approx(54.0)         # acc
    assert cols["avg"] == pytest.approx((60 + 55 + 51 + 52 + 58 + 54) / 6)
    # lm-eval's ",none" suffix and a task with only one metric
    cols = paper_columns({"piqa_fixture": {"acc_norm,none": 0.25}})
    assert cols["piqa"] == pytest.approx(25.0) and cols["avg"] == pytest.approx(25.0) and cols["lambada_ppl"] is None


# ------------------------------------------------------------------------------------------ paper data
def test_paper_data_file_is_consistent():
    data = json.loads(PAPER_FILE.read_text())
    sizes = {t: len(v["rows"]) for t, v in data["tables"].items()}
    assert sizes == {"table1": 17, "table2": 17, "table3": 8, "table4": 6, "table5": 7, "table6": 7}
    printed_exceptions = {("table1", "mamba2_2.7b", "evit", 0.2), ("table6", "mamba2_2.7b", "ltmp", 0.1)}
    for t in ("table1", "table2", "table6"):
        for r in data["tables"][t]["rows"]:
            mean = sum(r[c] for c in data["columns"][1:7]) / 6
            if (t, r["model"], r["method"], r["target_flops"]) not in printed_exceptions:
                assert abs(mean - r["avg"]) <= 0.051, (t, r)
    # spot checks typed from the paper
    t1 = {(r["model"], r["method"], r["target_flops"]): r for r in data["tables"]["table1"]["rows"]}
    assert t1[("mamba2_2.7b", "utrc", 0.3)]["lambada_ppl"] == 42.61
    assert t1[("mamba2_1.3b", "pumer", 0.2)]["lambada_ppl"] == 49017.23
    assert [r["lambada_ppl"] for r in data["tables"]["table5"]["rows"]][-1] == 40.61


def test_paper_lookup_respects_design_and_preference():
    base = {"model": "mamba2_2.7b", "method": "utrc", "target_flops": 0.3, "locations": L64, "metric": "clip",
            "hidden": "hybrid", "q": 0.5, "residual": "merge", "residual_q": 0.5}
    assert find_paper_row(base)[0] == "table1" and find_paper_row(base)[1]["lambada_ppl"] == 42.61
    table, row = find_paper_row(base, prefer="table5")
    assert table == "table5" and row["lambada_ppl"] == 40.61
    table, row = find_paper_row({**base, "hidden": "merge", "residual": "merge"})
    assert table == "table5" and row["avg"] == 54.0
    table, row = find_paper_row({**base, "target_flops": 0.2, "metric": "l2"})
    assert table == "table3" and row["lambada_ppl"] == 19.86
    table, row = find_paper_row({**base, "target_flops": 0.2, "locations": [20, 25, 30, 35, 40, 45, 50]})
    assert table == "table4" and row["avg"] == 57.8
    assert find_paper_row({**base, "target_flops": 0.25}) == (None, None)
    assert find_paper_row({**base, "model": "tiny_mamba2"}) == (None, None)
    # parity methods compare with the method they reproduce; none ignores the FLOPs target
    assert find_paper_row({**base, "method": "evit_official", "target_flops": 0.1})[1]["lambada_ppl"] == 11.43
    assert find_paper_row({"model": "mamba_2.8b", "method": "none", "target_flops": 0.0})[1]["avg"] == 63.3
    # model config names (dashes, -hf suffix) find the same rows
    assert find_paper_row({"model": "mamba-2.8b-hf", "method": "none"})[1]["avg"] == 63.3
    assert find_paper_row({**base, "model": "mamba2-2.7b"})[1]["lambada_ppl"] == 42.61


# ---------------------------------------------------------------------------------------------- report
def test_markdown_table_equals_results_and_paper(tmp_path):
    sweep = tmp_path / "multirun" / "table1_mamba2"
    runs = [write_run(sweep, "a/none", method="none", flops=0.0),
            write_run(sweep, "a/evit", method="evit", flops=0.2),
            write_run(sweep, "a/utrc", method="utrc", flops=0.2),
            write_run(sweep, "b/utrc", model="tiny_mamba2", method="utrc", flops=0.2, locations=[4, 7, 10, 13])]
    write_run(sweep, "c/killed", method="pumer", flops=0.1, status="running")
    assert len(load_sweep(sweep)) == 4  # the incomplete run is left out
    built = build_report(sweep, tmp_path / "out")
    table = parse_table(built["paths"]["markdown"].read_text())
    assert [(r["Model"], r["Method"]) for r in table] == [
        ("Mamba-2-2.7B", "baseline"), ("Mamba-2-2.7B", "EViT"), ("Mamba-2-2.7B", "Ours (UTRC)"),
        ("tiny_mamba2", "Ours (UTRC)")]
    paper = {(r["model"], r["method"], r["target_flops"]): r for r in load_paper_results()["tables"]["table1"]["rows"]}
    titles = load_paper_results()["column_titles"]
    by_key = {(r["model"], r["method"]): r for r in runs}
    models = {"Mamba-2-2.7B": "mamba2-2.7b", "tiny_mamba2": "tiny_mamba2"}
    methods = {"baseline": "none", "EViT": "evit", "Ours (UTRC)": "utrc"}
    for row in table:
        model, method = models[row["Model"]], methods[row["Method"]]
        res = by_key[(model, method)]
        m = res["metrics"]
        expected_ours = {
            "lambada_ppl": m["lambada_openai"]["perplexity"], "lambada_acc": 100 * m["lambada_openai"]["acc"],
            "hellaswag": 100 * m["hellaswag"]["acc_norm"], "piqa": 100 * m["piqa"]["acc"],
            "arc_easy": 100 * m["arc_easy"]["acc"], "arc_challenge": 100 * m["arc_challenge"]["acc_norm"],
            "winogrande": 100 * m["winogrande"]["acc"]}
        expected_ours["avg"] = sum(v for k, v in expected_ours.items() if k != "lambada_ppl") / 6
        p = paper.get((model.replace("-", "_"), method, res["target_flops"]))
        for col, title in titles.items():
            ours, theirs = split_cell(row[title])
            digits = 2 if col == "lambada_ppl" else 1
            assert ours == round(expected_ours[col], digits), (row, col)
            assert theirs == (None if p is None else p[col]), (row, col)
        assert row["paper"] == ("table1" if p else "–")
        assert row["FLOPs ↓ target"] == f"{100 * res['target_flops']:.1f}%"
        assert row["realised"] == f"{100 * 0.9 * res['target_flops']:.1f}%"
    # report.json keeps full precision
    rows = json.loads(built["paths"]["json"].read_text())["rows"]
    utrc = next(r for r in rows if r["model"] == "mamba2-2.7b" and r["method"] == "utrc")
    assert utrc["ours"]["lambada_ppl"] == by_key[("mamba2-2.7b", "utrc")]["metrics"]["lambada_openai"]["perplexity"]
    assert utrc["paper"]["avg"] == 58.7
    # plots: PNG files, and the plotted series are the table's numbers (line starts at the 0 % row)
    for name in ("accuracy", "ppl"):
        assert built["paths"][name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = series(built["rows"], "avg")
    base_avg = next(r for r in built["rows"] if r.method == "none").ours["avg"]
    assert lines["mamba2-2.7b utrc"] == [(0.0, pytest.approx(base_avg)), (20.0, pytest.approx(utrc["ours"]["avg"]))]
    assert series(built["rows"], "avg", which="paper")["mamba2-2.7b utrc"] == [(0.0, 63.8), (20.0, 58.7)]


def test_ablation_rows_get_variants_and_their_table(tmp_path):
    sweep = tmp_path / "table5_design"
    write_run(sweep, "m_m", flops=0.3, group="table5_design", hidden="merge", residual="merge")
    write_run(sweep, "q05_m", flops=0.3, group="table5_design")
    write_run(sweep, "q08_q02", flops=0.3, group="table5_design", q=0.8, residual="hybrid", residual_q=0.2)
    rows = collect_rows(load_sweep(sweep))
    got = {r.variant: (r.paper_table, r.paper["lambada_ppl"], r.paper["avg"], r.paper["hellaswag"]) for r in rows}
    assert got == {"M-only / M-only": ("table5", 42.61, 54.0, None),
                   "q=0.5 / M-only": ("table5", 40.61, 54.7, None),  # Table 5's print, not Table 1's 42.61
                   "q=0.8 / q=0.2": ("table5", 42.65, 54.3, None)}
    table = parse_table(render_markdown(rows))
    assert sorted(r["Variant"] for r in table) == ["M-only / M-only", "q=0.5 / M-only", "q=0.8 / q=0.2"]
    assert {r["Variant"]: split_cell(r["LAMBADA PPL ↓"])[1] for r in table}["q=0.5 / M-only"] == 40.61
    # the same runs without an experiment name fall back to Table 1 for the paper default
    rows = collect_rows([{**r, "config": {**r["config"], "logger": {}}} for r in load_sweep(sweep)])
    assert {r.variant: r.paper["lambada_ppl"] for r in rows}["q=0.5 / M-only"] == 42.61


def test_rows_that_differ_only_in_a_config_key_get_a_column_for_it(tmp_path):
    """A ``seed=0,1`` sweep: two rows per setting that the paper's columns show alike get a ``seed`` column; a key
    that does not change a result (here the W&B project) gets none, nor do rows that differ anyway."""
    sweep = tmp_path / "sw"
    for seed in (0, 1):
        for method, flops in (("none", 0.0), ("utrc", 0.2)):
            res = write_run(sweep, f"{method}/seed={seed}", method=method, flops=flops,
                            metrics=fake_metrics(flops * 10 + seed))
            res["config"].update(seed=seed, logger={"group": "table1_mamba2", "project": f"p{seed}"})
            (sweep / method / f"seed={seed}" / "results.json").write_text(json.dumps(res))
    built = build_report(sweep, tmp_path / "out", plots=False)
    table = parse_table(built["markdown"])
    assert [(r["Method"], r["seed"]) for r in table] == [("baseline", "0"), ("baseline", "1"), ("Ours (UTRC)", "0"),
                                                         ("Ours (UTRC)", "1")]
    assert not any(k.startswith("logger") for k in table[0])
    assert [r.extra for r in built["rows"]] == [{"seed": 0}, {"seed": 1}] * 2
    # one seed: the rows differ in their method anyway, no extra column
    for method in ("none", "utrc"):
        (sweep / method / "seed=1" / "results.json").unlink()
    single = build_report(sweep, tmp_path / "out1", plots=False)
    assert "seed" not in parse_table(single["markdown"])[0] and len(single["rows"]) == 2


def test_wandb_runs_become_the_same_rows(tmp_path):
    res = write_run(tmp_path, "r", method="evit", flops=0.1)
    res["config"]["model"].update(n_layer=64, locations=L64)
    res["config"]["reduction"].update(locations=None, location_start=None, location_stride=None, location_stop=None)
    summary = {f"metrics/{t}/{k}": v for t, ms in res["metrics"].items() for k, v in ms.items()}
    summary.update(target_flops=0.1, keep_ratio=0.97, realised_flops_reduction=0.09)
    converted = results_from_wandb(res["config"], summary, name="mamba2_2.7b-evit-f0.1")
    assert converted["metrics"] == res["metrics"]
    [row] = collect_rows([converted])
    assert row.ours == paper_columns(res["metrics"])
    assert row.paper["lambada_ppl"] == 11.43 and row.realised_flops == pytest.approx(0.09)
    # start/stride locations are rebuilt the way the schedule builds them
    res["config"]["reduction"].update(location_start=20, location_stride=5, location_stop=51)
    assert results_from_wandb(res["config"], summary)["locations"] == [20, 25, 30, 35, 40, 45, 50]


def test_wandb_report_spec_builds_offline(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces.expr import expr_to_filters

    report = build_wandb_report_spec("ent", "proj", "table1_mamba2", markdown="| a |\n|---|\n| 1 |",
                                     methods=("none", "utrc"))
    assert (report.entity, report.project) == ("ent", "proj") and "table1_mamba2" in report.title
    grid = next(b for b in report.blocks if isinstance(b, wr.PanelGrid))
    assert [rs.name for rs in grid.runsets] == ["none", "utrc"]
    for rs, method in zip(grid.runsets, ("none", "utrc")):
        f = expr_to_filters(rs.filters)  # parses; group and method are both constrained
        leaves = {(x.key.section, x.key.name): x.value for x in f.filters}
        assert leaves[("run", "group")] == "table1_mamba2"
        assert leaves[("config", "reduction.method")] == method
    scatters = [p for p in grid.panels if isinstance(p, wr.ScatterPlot)]
    assert scatters[0].y.name == "avg_acc" and scatters[0].x.name == "target_flops"
    ppl = next(p for p in scatters if "perplexity" in p.y.name)
    assert ppl.log_y is True and ppl.y.name == "metrics/lambada_openai/perplexity"
    assert {p.y.name for p in scatters} >= {f"metrics/{t}/{m}" for t, m in (
        ("hellaswag", "acc_norm"), ("piqa", "acc"), ("arc_easy", "acc"), ("arc_challenge", "acc_norm"),
        ("winogrande", "acc"), ("lambada_openai", "acc"))}
    md = next(b for b in report.blocks if isinstance(b, wr.MarkdownBlock))
    assert md.text.startswith("| a |")


def test_cli_writes_report_and_rejects_unknown_source(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "sw", "x", method="none", flops=0.0)
    assert main([str(tmp_path / "sw"), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    assert (tmp_path / "o" / "report.md").is_file() and not (tmp_path / "o" / "accuracy_vs_flops.png").exists()
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wbcfg"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert main([str(tmp_path / "no-such-dir")]) == 2
    assert "W&B group lookup failed" in capsys.readouterr().err


def test_bench_runs_give_throughput_and_memory_plots(tmp_path):
    from tor_exp.reporting.plots import bench_series

    rows = []
    for variant, f, gain, saving in (("none", 0.0, 1.0, 0.0), ("utrc-f0.1", 0.1, 1.08, 0.1), ("utrc-f0.3", 0.3, 1.3, 0.28)):
        rows.append({"kind": "generate", "batch": 16, "seq_len": 2048, "variant": variant, "method": "utrc",
                     "target_flops": f, "throughput_gain": gain, "tokens_per_s": 100 * gain})
        rows.append({"kind": "memory", "batch": 96, "seq_len": 2048, "logits": "last", "variant": variant,
                     "method": "utrc", "target_flops": f, "peak_allocated_saving": saving})
    for sub, kind in (("gen", "generate"), ("mem", "memory")):
        d = tmp_path / "sw" / sub
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "status": "complete", "task": "bench", "model": "mamba2-2.7b", "method": "utrc",
            "bench": {"kind": kind, "device_name": "H100", "rows": [r for r in rows if r["kind"] == kind]}}))
    built = build_report(tmp_path / "sw", tmp_path / "out")
    assert built["paths"]["throughput"].read_bytes()[:4] == b"\x89PNG"
    assert built["paths"]["memory"].read_bytes()[:4] == b"\x89PNG"
    assert "accuracy" not in built["paths"]  # no eval runs
    assert bench_series(json.loads(built["paths"]["json"].read_text())["bench_rows"], "generate", "throughput_gain") == {
        "mamba2-2.7b b16 n2048": [(0.0, 1.0), (10.0, 1.08), (30.0, 1.3)]}
    assert "## Benchmarks" in built["markdown"] and "| H100 |" in built["markdown"]


def test_unreadable_result_files_are_named_in_the_report_and_its_exit_status(tmp_path, capsys):
    from tor_exp.report import main as report_main

    sweep = tmp_path / "sweep"
    write_run(sweep, "good")
    for name, content in (("broken", b'{"status": "compl'), ("binary", b"\xff\xfe"), ("list", b"[1]")):
        (sweep / name).mkdir()
        (sweep / name / "results.json").write_bytes(content)
    assert report_main([str(sweep), "--no-plots", "--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err
    assert err.count("warning: unreadable") == 3 and "error: report written without 3" in err
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "3 result file(s) could not be read" in markdown and "broken/results.json" in markdown
    assert len(parse_table(markdown)) == 1  # the one good run


def offline_metrics(ppl: float, acc: float) -> dict:
    """The shape `eval=offline` records: the reference model's held-out perplexity per byte and its 4-choice acc."""
    return {"reference_heldout": {"byte_perplexity": ppl, "bits_per_byte": 1.5, "acc": 0.0, "acc_stderr": 0.0},
            "reference_heldout_mc": {"acc": acc, "acc_stderr": 0.05, "acc_norm": acc / 2, "acc_norm_stderr": 0.05}}


def test_offline_tasks_get_their_own_columns_and_the_records_baseline_its_row(tmp_path, capsys):
    """`eval=offline` runs (no paper task) show their metrics, not a table of "– / –"; with no `none` job the
    records' own `baseline` block (eval.compare_baseline) is the baseline row, once for the jobs that share it."""
    sweep = tmp_path / "sw"
    base = offline_metrics(2.897, 0.84)
    for method, flops, ppl, acc in (("utrc", 0.2, 3.066, 0.76), ("evit", 0.2, 3.5, 0.70)):
        res = write_run(sweep, method, model="reference", method=method, flops=flops,
                        metrics=offline_metrics(ppl, acc), locations=[5, 8, 11, 14, 17])
        res["baseline"] = {"method": "none", "metrics": base}
        (sweep / method / "results.json").write_text(json.dumps(res))
    assert main([str(sweep), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    markdown = (tmp_path / "o" / "report.md").read_text()
    table = parse_table(markdown)
    assert "– / –" not in markdown
    got = [(r["Method"], r["reference_heldout ppl/byte ↓"], r["reference_heldout_mc acc (%)"]) for r in table]
    assert got == [("baseline", "2.897", "84.0"), ("EViT", "3.5", "70.0"), ("Ours (UTRC)", "3.066", "76.0")]
    assert table[0]["FLOPs ↓ target"] == "0.0%" and table[0]["realised"] == "0.0%"
    rows = json.loads((tmp_path / "o" / "report.json").read_text())["rows"]
    assert rows[2]["other"] == {"reference_heldout byte_perplexity": 3.066, "reference_heldout_mc acc": 0.76}
    # a `none` job of its own wins over the baselines the records hold: still one baseline row
    write_run(sweep, "none", model="reference", method="none", flops=0.0, metrics=offline_metrics(2.5, 0.9),
              locations=[5, 8, 11, 14, 17])
    table = parse_table(build_report(sweep, tmp_path / "o2", plots=False)["markdown"])
    assert [(r["Method"], r["reference_heldout ppl/byte ↓"]) for r in table][0] == ("baseline", "2.5")
    assert [r["Method"] for r in table].count("baseline") == 1


def test_memory_bench_rows_keep_their_logits_and_cache_columns(tmp_path):
    """The memory preset measures each variant once per logits mode; the report keeps the mode and the logits /
    KV-cache figures (in MiB), so no two of its rows look alike."""
    mib = 2 ** 20
    rows = []
    for variant, f, kv in (("none", 0.0, 8 * mib), ("utrc-f0.2", 0.2, 6 * mib)):
        for mode, logits in (("all", 64 * mib), ("last", 1 * mib)):
            rows.append({"kind": "memory", "batch": 4, "seq_len": 256, "logits": mode, "variant": variant,
                         "method": "utrc", "target_flops": f, "logits_bytes": logits * (1 - f if mode == "all" else 1),
                         "peak_allocated_bytes": None, "kv_cache_bytes": kv,
                         "kv_cache_saving": 1 - kv / (8 * mib)})
    d = tmp_path / "sw" / "mem"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"status": "complete", "task": "bench", "model": "tiny_nemotron_h",
                                                "method": "utrc", "bench": {"kind": "memory", "rows": rows}}))
    markdown = build_report(tmp_path / "sw", tmp_path / "out", plots=False)["markdown"]
    table = parse_table(markdown[markdown.index("## Benchmarks"):])
    got = [(r["logits"], r["variant"], r["logits MiB"], r["kv_cache MiB"], r["kv_cache_saving"]) for r in table]
    assert got == [("all", "none", "64", "8", "0"), ("last", "none", "1", "8", "0"),
                   ("all", "utrc-f0.2", "51.2", "6", "0.25"), ("last", "utrc-f0.2", "1", "6", "0.25")]
    assert len({tuple(r.values()) for r in table}) == len(table)


def test_an_unwritable_report_folder_is_one_error_line(tmp_path, capsys, monkeypatch):
    """`--out` naming a file, a folder below a file, a read-only sweep folder (default --out inside it), and an
    unwritable `--quality` prefix: one `error:` line each, exit 2, nothing written."""
    sweep = tmp_path / "sw"
    write_run(sweep, "x", method="none", flops=0.0)
    afile = tmp_path / "afile"
    afile.write_text("keep")

    def one_error(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        for needle in needles:
            assert needle in err, err

    one_error([str(sweep), "--no-plots", "--out", str(afile)], f"--out={afile}", "not a folder")
    one_error([str(sweep), "--no-plots", "--out", str(afile / "sub")], f"--out={afile / 'sub'}")
    one_error([str(sweep), "--quality", str(afile / "q")], f"--quality={afile / 'q'}")
    assert afile.read_text() == "keep"
    # a read-only sweep folder: permission bits where they bind (not root), else the write itself is refused
    sweep.chmod(0o555)
    try:
        if os.access(sweep, os.W_OK):  # root: permission bits do not bind, so the write itself fails
            import errno
            import tempfile

            def refuse(*args, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        one_error([str(sweep), "--no-plots"], str(sweep / "report"), "Permission denied", "pass --out")
    finally:
        sweep.chmod(0o755)
    assert not (sweep / "report").exists()
