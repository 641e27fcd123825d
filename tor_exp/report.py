"""`python -m tor_exp.report <sweep dir | W&B group>`: the paper's tables from our runs, beside the paper's numbers.

Writes ``report.md`` (rows model × method × FLOPs; columns LAMBADA PPL, LAMBADA acc, HellaSwag, PIQA, Arc-E,
Arc-C, WinoGrande, Avg.; each cell "ours / paper"), ``report.json`` (the same rows at full precision) and PNG plots
(avg accuracy and LAMBADA PPL vs FLOPs; throughput and memory vs FLOPs when bench runs exist). With
``--wandb-report`` (online) it also saves a W&B report with the same panels (:func:`build_wandb_report_spec`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from tor_exp.reporting.collect import (
    ReportRow,
    bench_rows,
    collect_rows,
    load_sweep,
    load_wandb_group,
    scan_sweep,
    paper_columns,
    results_from_wandb,
    task_column,
)
from tor_exp.paths import unwritable_folder
from tor_exp.reporting.paper import COLUMNS, canonical_model, load_paper_results
from tor_exp.reporting.plots import plot_accuracy_vs_flops, plot_bench, plot_ppl_vs_flops

__all__ = [
    "ReportRow", "build_report", "build_wandb_report_spec", "collect_rows", "format_value", "load_sweep",
    "load_wandb_group", "main", "paper_columns", "render_markdown", "results_from_wandb", "task_column",
]

_MISSING = "–"


def format_value(column: str, value: Optional[float]) -> str:
    """Paper precision: perplexity with 2 decimals (exponent form from 1e7), accuracies (already in %) with 1."""
    if value is None:
        return _MISSING
    if column == "lambada_ppl":
        return f"{value:.2f}" if abs(value) < 1e7 else f"{value:.3e}"
    return f"{value:.1f}"


def _pct(value: Optional[float]) -> str:
    return _MISSING if value is None else f"{100 * value:.1f}%"


def render_markdown(rows: list[ReportRow], *, title: str = "tor_exp report", notes: Sequence[str] = ()) -> str:
    """Markdown table in the paper's layout; every metric cell is ``ours / paper``."""
    data = load_paper_results()
    titles = data["column_titles"]
    show_variant = any(r.variant for r in rows)
    extra = list(rows[0].extra) if rows else []  # config keys that tell otherwise identical rows apart
    # the paper's columns only where some row has a number in them (ours or the paper's); tasks the paper does not
    # have (the offline reference tasks) get a column each, so such a sweep is not a table of empty cells
    paper_cols = [c for c in COLUMNS if not rows or any(r.ours.get(c) is not None or r.paper.get(c) is not None
                                                        for r in rows)]
    others = sorted({k for r in rows for k in r.other})
    header = ["Model", "Method"] + (["Variant"] if show_variant else []) + extra + ["FLOPs ↓ target", "realised", "ρ"]
    header += [titles[c] for c in paper_cols] + [_other_title(k) for k in others] + (["paper"] if paper_cols else [])
    intro = ("Each metric cell: **ours / paper** (paper = the published number for the same setting, "
             f"{_MISSING} where the paper has none). Accuracies in %, LAMBADA perplexity ↓. ") if paper_cols else ""
    if others:
        intro += ("Tasks the paper does not report (" + ", ".join(sorted({k.split(' ')[0] for k in others}))
                  + "): ours only, accuracies in %, perplexities ↓. ")
    lines = [f"# {title}", "",
             intro + "realised = backbone FLOPs reduction measured on the evaluated requests.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    from tor_exp.reduction.parity import is_parity, paper_method  # parity-ness by name: the method registry

    for r in rows:
        method = data["method_titles"].get(r.method, r.method)
        if is_parity(r.method):
            base = paper_method(r.method)
            method = f"{data['method_titles'].get(base, base)} (parity mode)"
        if r.alignment == "offset":
            method += " [offset]"
        cells = [data["model_titles"].get(canonical_model(r.model), r.model), method]
        if show_variant:
            cells.append(r.variant or "")
        cells += [_extra_value(r.extra.get(k)) for k in extra]
        cells += [_pct(r.target_flops), _pct(r.realised_flops),
                  _MISSING if r.keep_ratio is None else f"{r.keep_ratio:.4f}"]
        cells += [f"{format_value(c, r.ours.get(c))} / {format_value(c, r.paper.get(c))}" for c in paper_cols]
        cells += [_other_value(k, r.other.get(k)) for k in others]
        if paper_cols:
            cells.append(r.paper_table or _MISSING)
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines.append("| " + " | ".join([_MISSING] * len(header)) + " |")
    tasks = sorted({t for r in rows for t in r.tasks})
    lines += ["", f"Tasks evaluated: {', '.join(tasks) or 'none'}. Avg. = mean of the accuracy columns present "
              "(the paper's: all six). Metrics: LAMBADA acc, HellaSwag acc_norm, PIQA acc, Arc-E acc, Arc-C "
              "acc_norm, WinoGrande acc (the Mamba papers' convention)."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _other_title(key: str) -> str:
    """``"reference_heldout byte_perplexity"`` → ``"reference_heldout ppl/byte ↓"``; accuracies marked (%)."""
    task, metric = key.split(" ", 1)
    if "perplexity" in metric:
        return f"{task} {'ppl/byte' if metric == 'byte_perplexity' else 'ppl'} ↓"
    return f"{task} {metric} (%)"


def _other_value(key: str, value: Optional[float]) -> str:
    """Perplexities with 4 significant digits, accuracies in % with 1 decimal (the paper's precision)."""
    if value is None:
        return _MISSING
    return f"{value:.4g}" if "perplexity" in key else f"{100 * value:.1f}"


def _extra_value(value: Any) -> str:
    if value is None:
        return _MISSING
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _bench_markdown(brows: list[dict[str, Any]]) -> str:
    if not brows:
        return ""
    # the memory preset's rows differ in their logits mode and in the logits / cache bytes: without these columns
    # its rows (one per logits mode) look duplicated; byte counts are shown in MiB
    keys = ("model", "kind", "batch", "seq_len", "new_tokens", "logits", "variant", "target_flops",
            "realised_backbone", "tokens_per_s", "throughput_gain", "speedup", "peak_allocated_bytes",
            "peak_allocated_saving", "nvml_peak_bytes", "nvml_peak_saving", "logits_bytes", "logits_saving",
            "kv_cache_bytes", "kv_cache_saving", "ssm_cache_bytes", "ssm_cache_saving", "overhead_share",
            "device_name")
    present = [k for k in keys if any(r.get(k) is not None for r in brows)]
    titles = [k[: -len("_bytes")] + " MiB" if k.endswith("_bytes") else k for k in present]
    lines = ["", "## Benchmarks", "", "| " + " | ".join(titles) + " |", "|" + "|".join(["---"] * len(present)) + "|"]
    for r in brows:
        cells = []
        for k in present:
            v = r.get(k)
            if v is not None and k.endswith("_bytes"):
                v = v / 2 ** 20
            cells.append(_MISSING if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- W&B report
def build_wandb_report_spec(entity: str, project: str, group: str, *, title: Optional[str] = None,
                            methods: Sequence[str] = ("none", "pumer", "evit", "ltmp", "utrc"),
                            tasks: Sequence[str] = ("lambada_openai", "hellaswag", "piqa", "arc_easy",
                                                    "arc_challenge", "winogrande"),
                            markdown: Optional[str] = None) -> Any:
    """A wandb-workspaces Report for one sweep group, built without network (``.save()`` needs a login).

    One run set per method (filtered on the group and ``reduction.method``) so every scatter colours methods
    apart; panels: avg accuracy (``avg_acc``, written into run summaries by ``--wandb-report``) and LAMBADA
    PPL (log) vs ``target_flops``, one accuracy panel per task, realised vs target FLOPs, and the run comparer.
    """
    import wandb_workspaces.reports.v2 as wr

    from tor_exp.reporting.collect import COLUMN_METRICS

    runsets = [wr.Runset(entity=entity, project=project, name=m,
                         filters=f"Metric('Group') == '{group}' and Config('reduction.method') == '{m}'")
               for m in methods]
    x = wr.SummaryMetric("target_flops")
    lambada = next((t for t in tasks if task_column(t) == "lambada"), None)
    panels: list[Any] = [wr.ScatterPlot(title="Avg. accuracy vs FLOPs", x=x, y=wr.SummaryMetric("avg_acc"))]
    if lambada:
        panels.append(wr.ScatterPlot(title="LAMBADA perplexity vs FLOPs", x=x,
                                     y=wr.SummaryMetric(f"metrics/{lambada}/perplexity"), log_y=True))
    for task in tasks:
        stem = task_column(task)
        if stem is None:
            continue
        metric = COLUMN_METRICS["lambada_acc" if stem == "lambada" else stem][0]
        panels.append(wr.ScatterPlot(title=f"{task} {metric} vs FLOPs", x=x, y=wr.SummaryMetric(f"metrics/{task}/{metric}")))
    panels.append(wr.ScatterPlot(title="realised vs target FLOPs", x=x, y=wr.SummaryMetric("realised_flops_reduction")))
    panels.append(wr.RunComparer(diff_only="split"))
    blocks: list[Any] = [
        wr.H1(text=title or f"tor_exp: {group}"),
        wr.P(text=f"Sweep group {group}: token reduction on SSM and hybrid language models (method: "
                  "Rethinking Token Reduction for State Space Models). Accuracies from lm-eval; x axis = FLOPs reduction target."),
        wr.PanelGrid(runsets=runsets, panels=panels),
    ]
    if markdown:
        blocks += [wr.H2(text="Table (ours / paper)"), wr.MarkdownBlock(text=markdown)]
    return wr.Report(project=project, entity=entity, title=title or f"tor_exp: {group}",
                     description=f"Runs of W&B group {group}", blocks=blocks)


def push_avg_acc(group: str, *, entity: Optional[str], project: str) -> int:
    """Write ``avg_acc`` (paper convention, in %) into each run's summary so the report's panel has a key."""
    import wandb

    api = wandb.Api()
    n = 0
    for run in api.runs(f"{entity}/{project}" if entity else project, filters={"group": group}):
        res = results_from_wandb(dict(run.config), dict(run.summary))
        avg = paper_columns(res["metrics"])["avg"]
        if avg is not None:
            run.summary["avg_acc"] = avg
            run.summary.update()
            n += 1
    return n


# -------------------------------------------------------------------------------------------------- build
def build_report(source: str | Path, out_dir: Optional[str | Path] = None, *, results: Optional[list] = None,
                 prefer_table: Optional[str] = None, title: Optional[str] = None,
                 plots: bool = True, unreadable: Sequence[str] = ()) -> dict[str, Any]:
    """Report files for the runs in ``source`` (a sweep dir) or in ``results`` (already loaded); ``unreadable``
    names result files that could not be used (they are listed in the report).

    Returns ``{"rows", "markdown", "paths": {"markdown", "json", <plot name>: png}}``.
    """
    if results is None:
        results, unreadable = scan_sweep(source)
    out = Path(out_dir) if out_dir is not None else Path(source) / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(results, prefer_table=prefer_table)
    brows = bench_rows(results)
    notes = [f"**{len(unreadable)} result file(s) could not be read and are missing from this report:** "
             + "; ".join(f"`{line}`" for line in unreadable)] if unreadable else []
    skipped = [r for r in results if r.get("task", "eval") == "eval" and not r.get("metrics")]
    if skipped:
        notes.append(f"{len(skipped)} eval run(s) without metrics were left out.")
    markdown = render_markdown(rows, title=title or f"tor_exp report: {source}", notes=notes) + _bench_markdown(brows)
    paths: dict[str, Path] = {"markdown": out / "report.md", "json": out / "report.json"}
    paths["markdown"].write_text(markdown)
    paths["json"].write_text(json.dumps({"source": str(source), "rows": [r.as_dict() for r in rows],
                                         "bench_rows": brows}, indent=1, default=str))
    if plots:
        for name, fn in (("accuracy", plot_accuracy_vs_flops), ("ppl", plot_ppl_vs_flops)):
            png = fn(rows, out / f"{name}_vs_flops.png")
            if png is not None:
                paths[name] = png
        paths.update(plot_bench(brows, out))
    return {"rows": rows, "markdown": markdown, "paths": paths}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tor-exp-report", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="sweep/run directory with results.json files, or a W&B group name")
    parser.add_argument("--out", default=None, help="output folder (default: <sweep dir>/report or ./report-<group>)")
    parser.add_argument("--wandb-entity", default=None)
    parser.add_argument("--wandb-project", default="tor_exp")
    parser.add_argument("--wandb-report", action="store_true",
                        help="also save a W&B report for the group (needs network and `wandb login`)")
    parser.add_argument("--paper-table", default=None, help="prefer this paper table (table1..table6) when several match")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quality", default=None, metavar="PREFIX",
                        help="write PREFIX.md/.json/.png: every method's difference to none and to UTRC at the same "
                             "target with paired bootstrap intervals (needs a sweep run with eval.log_samples=true)")
    parser.add_argument("--iters", type=int, default=1000, help="bootstrap resamples for --quality")
    args = parser.parse_args(argv)

    source = Path(args.source)
    group: Optional[str] = None
    unreadable: list[str] = []
    if source.exists():
        results, unreadable = scan_sweep(source)
        group = source.name
        out = args.out
    else:
        group = args.source
        try:
            results = load_wandb_group(group, entity=args.wandb_entity, project=args.wandb_project)
        except Exception as err:  # no network, no login, unknown project
            sys.stderr.write(f"error: {args.source!r} is not a directory and W&B group lookup failed: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}\n")
            return 2
        out = args.out or f"report-{group}"
    for line in unreadable:
        sys.stderr.write(f"warning: unreadable, left out of the report: {line}\n")
    if not results:
        sys.stderr.write(f"error: no complete runs found in {args.source}\n")
        return 2
    if args.quality:
        from tor_exp.reporting.quality import write_quality

        problem = unwritable_folder(Path(args.quality).parent)
        if problem:
            sys.stderr.write(f"error: --quality={args.quality}: cannot write into {Path(args.quality).parent}: "
                             f"{problem}\n")
            return 2
        try:
            paths = write_quality(results, Path(args.quality), iters=args.iters,
                                  title=f"Quality by method and FLOPs target: {source.name}")
        except (ValueError, KeyError) as err:
            sys.stderr.write(f"error: --quality: {err}\n")
            return 2
        except OSError as err:  # a sample file gone, a write that failed half-way (disk full)
            sys.stderr.write(f"error: --quality={args.quality}: {err}\n")
            return 2
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 1 if unreadable else 0
    out_dir = Path(out) if out is not None else source / "report"
    problem = unwritable_folder(out_dir)
    if problem:
        where = f"--out={out}" if out is not None else f"{out_dir} (the default --out: <sweep dir>/report)"
        sys.stderr.write(f"error: {where}: cannot write the report there: {problem}"
                         + ("" if out is not None else "; pass --out to write it elsewhere") + "\n")
        return 2
    try:
        built = build_report(args.source, out_dir, results=results, prefer_table=args.paper_table,
                             plots=not args.no_plots, unreadable=unreadable)
    except OSError as err:  # the folder was writable a moment ago: disk full, removed underneath us
        sys.stderr.write(f"error: --out={out_dir}: writing the report failed: {err}\n")
        return 2
    for name, path in built["paths"].items():
        print(f"{name}: {path}")
    if unreadable:
        sys.stderr.write(f"error: report written without {len(unreadable)} unreadable result file(s) (listed above "
                         "and in report.md)\n")
        return 1
    if args.wandb_report:
        if not args.wandb_entity:
            sys.stderr.write("error: --wandb-report needs --wandb-entity\n")
            return 2
        push_avg_acc(group, entity=args.wandb_entity, project=args.wandb_project)
        report = build_wandb_report_spec(args.wandb_entity, args.wandb_project, group, markdown=built["markdown"])
        report.save()
        print(f"wandb report: {getattr(report, 'url', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
