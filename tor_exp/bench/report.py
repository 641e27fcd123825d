"""Markdown table and PNG plot of one preset's rows (matplotlib, Agg backend: no display needed); the plot is
made in memory, so a job writes it through its output folder like every other file."""
from __future__ import annotations

from typing import Any, Optional

_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    # (row key, header, format)
    "prefill": [("batch", "B", "d"), ("seq_len", "N", "d"), ("variant", "variant", "s"), ("keep_ratio", "ρ", ".4f"),
                ("realised_backbone", "realised f", ".3f"), ("prefill_min_s", "min ms", "ms"),
                ("prefill_median_s", "median ms", "ms"), ("speedup", "speed-up", ".3f"),
                ("ideal_speedup", "ideal 1/(1−f)", ".3f"), ("of_ideal", "of ideal", ".3f"),
                ("ideal_speedup_padded", "ideal (chunk-padded f)", ".3f"), ("of_ideal_padded", "of padded ideal", ".3f"),
                ("ideal_speedup_tokens", "ideal (token f)", ".3f")],
    "overhead": [("batch", "B", "d"), ("seq_len", "N", "d"), ("variant", "variant", "s"),
                 ("prefill_median_s", "prefill ms", "ms"), ("reduce_median_s", "in reduce ms", "ms"),
                 ("reduce_calls", "calls", "d"), ("overhead_share", "share", "pct"), ("speedup", "speed-up", ".3f")],
    "generate": [("batch", "B", "d"), ("seq_len", "N", "d"), ("new_tokens", "new", "d"), ("variant", "variant", "s"),
                 ("realised_backbone", "realised f", ".3f"), ("prefill_min_s", "P ms", "ms"),
                 ("decode_min_s", "D ms", "ms"), ("decode_ms_per_token", "ms/token", ".2f"),
                 ("tokens_per_s", "tokens/s", ".1f"), ("throughput_gain", "gain", ".3f"),
                 ("ideal_gain", "ideal (P+D)/(P(1−f)+D)", ".3f"), ("of_ideal", "of ideal", ".3f")],
    "memory": [("batch", "B", "d"), ("seq_len", "N", "d"), ("logits", "logits", "s"), ("variant", "variant", "s"),
               ("realised_backbone", "realised f", ".3f"), ("logits_bytes", "logits MiB", "mib"),
               ("peak_allocated_bytes", "peak alloc MiB", "mib"), ("peak_allocated_saving", "saving", "pct"),
               ("nvml_peak_bytes", "NVML peak MiB", "mib"), ("nvml_peak_saving", "NVML saving", "pct"),
               ("kv_cache_bytes", "KV cache MiB", "mib"), ("kv_cache_saving", "KV saving", "pct")],
}


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "s":
        return str(value)
    if fmt == "ms":
        return f"{1000.0 * value:.2f}"
    if fmt == "mib":
        return f"{value / 2 ** 20:.1f}"
    if fmt == "pct":
        return f"{100.0 * value:.1f}%"
    return format(value, fmt)


def markdown_table(kind: str, rows: list[dict[str, Any]]) -> str:
    """One GitHub-markdown table of the preset's rows (– where a value does not apply or was not measured)."""
    cols = _COLUMNS[kind]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), f) for k, _, f in cols) + " |")
    return "\n".join(lines)


def plot_png(kind: str, rows: list[dict[str, Any]]) -> Optional[bytes]:
    """Measured ratio vs target FLOPs reduction per (B, N), with the ideal as a dashed line, as PNG bytes (None
    without matplotlib); the caller decides where they go (a job writes them through its folder)."""
    import io

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    measured, ideal, ylabel = {
        "prefill": ("speedup", "ideal_speedup", "prefill speed-up"),
        "overhead": ("overhead_share", None, "share of prefill inside reduce"),
        "generate": ("throughput_gain", "ideal_gain", "end-to-end throughput gain"),
        "memory": ("peak_allocated_saving", None, "peak memory saving"),
    }[kind]
    if kind == "memory" and not any(r.get("peak_allocated_saving") is not None for r in rows):
        measured = "logits_saving"
        ylabel = "logits tensor saving (no CUDA peak on CPU)"
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = f"B={r['batch']} N={r['seq_len']}" + (f" logits={r['logits']}" if kind == "memory" else "")
        groups.setdefault(key, []).append(r)
    for key, group in groups.items():
        group = sorted((r for r in group if r.get(measured) is not None), key=lambda r: r["target_flops"])
        if not group:
            continue
        xs = [100 * r["target_flops"] for r in group]
        line, = ax.plot(xs, [r[measured] for r in group], marker="o", label=key)
        if ideal is not None:
            ax.plot(xs, [r.get(ideal) or 1.0 for r in group], ls="--", color=line.get_color(), alpha=0.7)
    ax.set_xlabel("target FLOPs reduction (%)")
    ax.set_ylabel(ylabel + (" (dashed: ideal)" if ideal else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
