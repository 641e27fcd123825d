"""PNG plots of a report: accuracy and LAMBADA PPL vs FLOPs (ours solid, paper dashed), bench throughput/memory.

Each line is one (model, method, variant) and starts at the model's 0 % row, as the paper's figures do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tor_exp.reporting.collect import ReportRow
from tor_exp.reporting.paper import canonical_model, load_paper_results


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def series(rows: list[ReportRow], column: str, *, which: str = "ours") -> dict[str, list[tuple[float, float]]]:
    """``{label: [(FLOPs %, value), ...]}`` sorted by FLOPs; the model's 0 % row is prepended to every line."""
    baselines = {r.model: getattr(r, which).get(column) for r in rows if r.method == "none"}
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.method == "none" or r.target_flops is None:
            continue
        value = getattr(r, which).get(column)
        if value is None:
            continue
        label = f"{r.model} {r.method}" + (f" [{r.variant}]" if r.variant else "")
        label += "".join(f" {k}={v}" for k, v in r.extra.items())
        points = lines.setdefault(label, [])
        if not points and baselines.get(r.model) is not None:
            points.append((0.0, float(baselines[r.model])))
        points.append((100.0 * float(r.target_flops), float(value)))
    for label, pts in lines.items():
        pts.sort()
    if not lines:  # a sweep of baselines only: one point per model
        lines = {f"{m} none": [(0.0, float(v))] for m, v in baselines.items() if v is not None}
    return lines


def plot_metric_vs_flops(rows: list[ReportRow], column: str, path: str | Path, *, ylabel: str, title: str,
                         log_y: bool = False, with_paper: bool = True) -> Optional[Path]:
    """One line per (model, method, variant); paper numbers dashed in the same colour. None if nothing to plot."""
    ours = series(rows, column)
    if not ours:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    paper = series(rows, column, which="paper") if with_paper else {}
    for i, (label, pts) in enumerate(sorted(ours.items())):
        color = f"C{i % 10}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=label)
        if label in paper and paper[label]:
            pp = paper[label]
            ax.plot([p[0] for p in pp], [p[1] for p in pp], marker="x", linestyle="--", color=color, alpha=0.7,
                    label=f"{label} (paper)")
    ax.set_xlabel("FLOPs reduction target (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_flops(rows: list[ReportRow], path: str | Path) -> Optional[Path]:
    return plot_metric_vs_flops(rows, "avg", path, ylabel="average accuracy (%)", title="Avg. accuracy vs FLOPs")


def plot_ppl_vs_flops(rows: list[ReportRow], path: str | Path) -> Optional[Path]:
    return plot_metric_vs_flops(rows, "lambada_ppl", path, ylabel="LAMBADA perplexity (log)",
                                title="LAMBADA perplexity vs FLOPs", log_y=True)


def bench_series(brows: list[dict[str, Any]], kind: str, key: str) -> dict[str, list[tuple[float, float]]]:
    """``{"<model> b<B> n<N>": [(FLOPs %, value)]}`` from bench rows of one kind (the `none` row at 0 %)."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in brows:
        if r.get("kind") != kind or r.get(key) is None:
            continue
        if kind == "memory" and r.get("logits") not in (None, "last"):
            continue
        x = 0.0 if r.get("variant") == "none" else 100.0 * float(r.get("target_flops") or 0.0)
        lines.setdefault(f"{r.get('model')} b{r.get('batch')} n{r.get('seq_len')}", []).append((x, float(r[key])))
    for pts in lines.values():
        pts.sort()
    return lines


def _paper_efficiency(name: str, scale: float = 1.0) -> dict[str, list[tuple[float, float]]]:
    eff = load_paper_results()["efficiency"][name]["values"]
    out = {}
    for model, by_f in eff.items():
        pts = [(100.0 * float(f), scale * float(v)) for f, v in by_f.items()]
        out[model] = sorted(pts)
    return out


def plot_bench(brows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """throughput_vs_flops.png (generate: tokens/s and gain) and memory_vs_flops.png (peak memory saving)."""
    plt = None
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    specs = (
        ("throughput", "generate", "throughput_gain", "generation throughput gain (×)", "throughput_speedup", 1.0),
        ("memory", "memory", "peak_allocated_saving", "peak memory saving (%)", "peak_memory_reduction_pct", 1.0),
    )
    for name, kind, key, ylabel, paper_key, scale in specs:
        lines = bench_series(brows, kind, key)
        if not lines:
            continue
        if kind == "memory":
            lines = {k: [(x, 100.0 * y) for x, y in v] for k, v in lines.items()}
        plt = plt or _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        models = set()
        for i, (label, pts) in enumerate(sorted(lines.items())):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i % 10}", label=label)
            models.add(canonical_model(label.split(" ")[0]))
        for j, (model, pts) in enumerate(sorted(_paper_efficiency(paper_key, scale).items())):
            if model in models:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="x", linestyle="--", alpha=0.7,
                        color=f"C{(len(lines) + j) % 10}", label=f"{model} (paper)")
        ax.set_xlabel("FLOPs reduction target (%)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs FLOPs")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}_vs_flops.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written[name] = path
    return written
