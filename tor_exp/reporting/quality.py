"""Quality of every method at every FLOPs target, as differences with paired bootstrap intervals.

The numbers come from one sweep of the normal job (the lm-eval backend is the only scorer) with
``eval.log_samples=true``: each job logs lm-eval's per-document records, and every method is compared with
``none`` and with UTRC at the same target on the same documents (:mod:`tor_exp.reporting.intervals`)::

    python -m tor_exp -m experiment=reference_quality
    python -m tor_exp.report multirun/reference_quality --quality docs/reference_quality
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from tor_exp.reporting.collect import task_columns
from tor_exp.reporting.intervals import aggregation, interval_seed, paired_difference, per_document

#: the method every other one is also compared with, at the same FLOPs target
REFERENCE_METHOD = "utrc"


def job_samples(record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """task → lm-eval's per-document records of the job's own method (the files results.json lists)."""
    folder = Path(record["_path"])
    files = (record.get("samples") or {}).get(record["method"]) or {}
    return {task: [json.loads(line) for line in (folder / rel).read_text().splitlines() if line.strip()]
            for task, rel in files.items()}


def _metrics(records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (task, metric) pairs to report: each task's headline metrics, minus those no run ever moves off 0."""
    pairs = [(task, metric) for task, metric, _ in task_columns(records[0]["metrics"])]
    return [(t, m) for t, m in pairs if any(r["metrics"].get(t, {}).get(m) for r in records)]


def offset_counts(record: dict[str, Any]) -> dict[str, dict[str, int]]:
    """task → how many requests the released offset rule scored off their true position (a scored token was
    reduced away: ``misaligned``) or could not score in full (``short``), of ``requests``; empty for exact alignment."""
    alignment = record.get("alignment") or {}
    if alignment.get("mode") != "offset":
        return {}
    return {task: {"misaligned": int(c.get("offset_misaligned", 0)), "short": int(c.get("offset_short", 0)),
                   "requests": int((record.get("num_requests") or {}).get(task, 0))}
            for task, c in alignment.items() if isinstance(c, dict)}


def quality_rows(records: Sequence[dict[str, Any]], *, iters: int = 1000) -> list[dict[str, Any]]:
    """One row per job: method, target, realised FLOPs, each (task, metric) value and its differences to ``none``
    and to UTRC at the same target (``{"delta", "low", "high", "n", ...}``; resampled with the seed of that task
    and metric, :func:`~tor_exp.reporting.intervals.interval_seed`, as the jobs' own intervals are)."""
    from tor_exp.reporting.collect import baseline_records

    own_base: dict[int, dict[str, Any]] = {}
    if not any(r["method"] == "none" for r in records):
        # no `none` job: each record is compared with its own baseline (eval.compare_baseline), one row per
        # distinct baseline; the baseline's per-document files are in the record's folder (samples["none"])
        bases = baseline_records(list(records))
        for r in records:
            own_base[id(r)] = next((b for b in bases if b["_path"] == r["_path"]), None) or next(
                (b for b in bases if b["metrics"] == (r.get("baseline") or {}).get("metrics")), None)
        records = [*records, *bases]
    records = sorted(records, key=lambda r: (r["method"] != "none", r["method"], r.get("target_flops") or 0.0))
    if not records or records[0]["method"] != "none":
        raise ValueError("the sweep has no `none` job to compare with, and its records hold no baseline "
                         "(run with eval.compare_baseline=true or add reduction=none)")
    samples = {id(r): job_samples(r) for r in records}
    aggregations = {t: m for r in records for t, m in (r.get("aggregations") or {}).items()}
    metrics = _metrics(records)
    reference = {r.get("target_flops"): r for r in records if r["method"] == REFERENCE_METHOD}
    rows = []
    for r in records:
        row: dict[str, Any] = {"method": r["method"], "target": r.get("target_flops"), "keep_ratio": r.get("keep_ratio"),
                               "realised": r.get("realised_flops_reduction"), "values": {}, "vs_none": {},
                               f"vs_{REFERENCE_METHOD}": {}, "offset_rule": offset_counts(r)}
        for task, metric in metrics:
            key = f"{task}/{metric}"
            row["values"][key] = r["metrics"].get(task, {}).get(metric)
            agg_name = (aggregations.get(task) or {}).get(metric)
            if agg_name is None:
                continue
            mine = per_document(samples[id(r)].get(task, []), metric)
            base = own_base.get(id(r)) or records[0]
            for label, other in (("vs_none", base), (f"vs_{REFERENCE_METHOD}", reference.get(r.get("target_flops")))):
                if other is None or other is r:
                    continue
                diff = paired_difference(per_document(samples[id(other)].get(task, []), metric), mine,
                                         aggregation(agg_name), iters=iters,
                                         seed=interval_seed(task, metric))
                if diff is not None:
                    row[label][key] = diff.to_dict()
        rows.append(row)
    return rows


def _cell(d: Optional[dict[str, Any]], digits: int = 3) -> str:
    if not d:
        return "–"
    star = " **\\***" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{d['delta']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]{star}"


def render_quality_markdown(rows: list[dict[str, Any]], *, title: str, notes: Sequence[str] = ()) -> str:
    keys = list(rows[0]["values"])
    lines = [f"# {title}", "", *notes, "",
             "Each Δ is *method − none* or *method − UTRC at the same target* on the same documents, with its paired "
             "bootstrap 95 % interval (documents resampled with replacement); **\\*** marks an interval that "
             "excludes 0, i.e. a difference this many documents resolve.", ""]
    for key in keys:
        task, metric = key.split("/", 1)
        offset = any(row["offset_rule"].get(task) for row in rows)
        lines += [f"## {task}: {metric}", "",
                  f"| method | target | realised FLOPs ↓ | {metric} | Δ vs none [95 % CI] | Δ vs UTRC [95 % CI] |"
                  + (" offset rule: misaligned / short / requests |" if offset else ""),
                  "|---|---|---|---|---|---|" + ("---|" if offset else "")]
        for row in rows:
            value = row["values"].get(key)
            target = "–" if row["target"] is None or row["method"] == "none" else f"{100 * row['target']:.0f} %"
            realised = "–" if row["realised"] is None else f"{100 * row['realised']:.1f} %"
            shown = "–" if value is None else f"{value:.4f}"
            counts = row["offset_rule"].get(task)
            tail = (f" {counts['misaligned']} / {counts['short']} / {counts['requests']} |" if counts else " – |") \
                if offset else ""
            lines.append(f"| {row['method']} | {target} | {realised} | {shown} | {_cell(row['vs_none'].get(key))} | "
                         f"{_cell(row[f'vs_{REFERENCE_METHOD}'].get(key))} |" + tail)
        lines.append("")
    return "\n".join(lines)


def plot_quality(rows: list[dict[str, Any]], path: Path) -> Path:
    """Δ vs none (its interval as error bars) against realised FLOPs, one column per (task, metric). Paper-mode
    methods and parity modes get separate rows, so a collapsing parity mode does not flatten the paper-mode scale;
    methods at the same target are nudged apart on x so their intervals stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rows[0]["values"])
    methods = sorted({r["method"] for r in rows} - {"none"})
    from tor_exp.reduction.parity import is_parity

    groups = [(label, [m for m in methods if is_parity(m) == parity])
              for label, parity in (("paper mode", False), ("parity mode (released code)", True))]
    groups = [(label, ms) for label, ms in groups if ms]
    fig, axes = plt.subplots(len(groups), len(keys), figsize=(5.2 * len(keys), 3.8 * len(groups)), squeeze=False)
    for axes_row, (label, group) in zip(axes, groups):
        for ax, key in zip(axes_row, keys):
            for i, method in enumerate(group):
                pts = sorted((r["realised"], r["vs_none"][key]) for r in rows
                             if r["method"] == method and key in r["vs_none"])
                if not pts:
                    continue
                nudge = 0.25 * (i - (len(group) - 1) / 2)
                x = [100 * p[0] + nudge for p in pts]
                y = [p[1]["delta"] for p in pts]
                err = [[p[1]["delta"] - p[1]["low"] for p in pts], [p[1]["high"] - p[1]["delta"] for p in pts]]
                ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=method)
            ax.axhline(0.0, color="black", lw=0.8)
            ax.set_xlabel("realised backbone FLOPs reduction (%)")
            ax.set_ylabel(f"Δ {key.split('/', 1)[1]} vs none (95 % CI)")
            ax.set_title(f"{key.split('/', 1)[0]} · {label}", fontsize=10)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def provenance(records: Sequence[dict[str, Any]], rows: list[dict[str, Any]], iters: int) -> list[str]:
    """Where the numbers come from: model, documents per task, machine, versions, commit, wall time."""
    def distinct(key: str) -> str:
        return ", ".join(sorted({str(r.get(key)) for r in records}))

    def short(commit: Any) -> str:
        return str(commit)[:12] + ("-dirty" if str(commit).endswith("-dirty") else "")

    n_docs: dict[str, int] = {}
    for row in rows:
        for key, diff in row["vs_none"].items():
            n_docs[key.split("/", 1)[0]] = max(n_docs.get(key.split("/", 1)[0], 0), diff["n"])
    versions = records[0].get("versions") or {}
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("torch", "transformers", "lm_eval"))
    wall = sum(sum((r.get("timings") or {}).values()) for r in records)
    return [f"- model `{distinct('model')}`, {distinct('dtype')} on {distinct('device')} ({distinct('device_name')}, "
            f"{distinct('torch_threads')} torch thread(s)); {shown}; tor_exp commit(s) "
            + ", ".join(sorted({short(r.get("git_commit")) for r in records})),
            "- documents per task (every job scored the same ones): "
            + ", ".join(f"{t} {n}" for t, n in sorted(n_docs.items())),
            f"- {len(records)} jobs, {wall / 60:.0f} min of model time in all; {iters} bootstrap resamples per interval"]


def agreement(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]]) -> str:
    """Whether two models' paired differences say the same: both resolved with one sign, or both unresolved
    (``agree``); resolved on one model only (``only <which>``); resolved with opposite signs (``disagree``)."""
    if not a or not b:
        return "–"

    def sign(d: dict[str, Any]) -> int:
        return 1 if d["low"] > 0 else (-1 if d["high"] < 0 else 0)

    sa, sb = sign(a), sign(b)
    if sa == sb:
        return "agree" if sa else "agree (neither resolved)"
    if sa and sb:
        return "**disagree**"
    return "only first resolved" if sa else "only second resolved"


#: the verdict kinds of :func:`verdict`, in the order the summary counts them
VERDICTS = ("agree (all resolved)", "agree (none resolved)", "same sign where resolved", "**disagree**")
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


def _resolved_sign(d: dict[str, Any]) -> int:
    return 1 if d["low"] > 0 else (-1 if d["high"] < 0 else 0)


def verdict(diffs: dict[str, Optional[dict[str, Any]]]) -> str:
    """Whether N models' paired differences of one cell say the same (the models without the cell left out): all
    resolved with one sign (``agree (all resolved)``), none resolved (``agree (none resolved)``), the resolved ones
    sharing a sign (``same sign where resolved (k of N)``), or two resolved with opposite signs (``**disagree**``,
    naming the models on each side); ``–`` with fewer than two models to compare."""
    present = {model: d for model, d in diffs.items() if d}
    if len(present) < 2:
        return "–"
    signs = {model: _resolved_sign(d) for model, d in present.items()}
    up = [f"`{m}`" for m, s in signs.items() if s > 0]
    down = [f"`{m}`" for m, s in signs.items() if s < 0]
    if up and down:
        return f"**disagree** (+ {', '.join(up)}; − {', '.join(down)})"
    resolved = len(up) + len(down)
    if resolved == 0:
        return "agree (none resolved)"
    if resolved == len(present):
        return "agree (all resolved)"
    return f"same sign where resolved ({resolved} of {len(present)})"


def verdict_kind(text: str) -> str:
    """The entry of :data:`VERDICTS` a :func:`verdict` belongs to (its counts and model names dropped)."""
    return next((kind for kind in VERDICTS if text.startswith(kind)), text)


def _shared_keys(rows_by_model: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The (task/metric) keys that at least two models report, in the order they first appear."""
    models = list(rows_by_model.values())
    keys = dict.fromkeys(k for rows in models for k in rows[0]["values"])
    return [k for k in keys if sum(k in rows[0]["values"] for rows in models) >= 2]


def agreement_cells(rows_by_model: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per (task/metric, method, target) that at least two models ran (``none`` excepted), in the first
    model's row order then the other models' extra rows: each model's Δ vs none and vs UTRC (None where it lacks
    the cell) and the :func:`verdict` of each."""
    ref = f"vs_{REFERENCE_METHOD}"
    index = {model: {(r["method"], r["target"]): r for r in rows} for model, rows in rows_by_model.items()}
    order = list(dict.fromkeys((r["method"], r["target"]) for rows in rows_by_model.values() for r in rows))
    cells = []
    for key in _shared_keys(rows_by_model):
        for cell in order:
            found = {model: rows[cell] for model, rows in index.items() if cell in rows}
            if cell[0] == "none" or len(found) < 2:
                continue
            vs_none = {model: (found[model]["vs_none"].get(key) if model in found else None) for model in index}
            vs_ref = {model: (found[model][ref].get(key) if model in found else None) for model in index}
            cells.append({"key": key, "method": cell[0], "target": cell[1], "vs_none": vs_none, ref: vs_ref,
                          "verdict_none": verdict(vs_none), f"verdict_{REFERENCE_METHOD}": verdict(vs_ref)})
    return cells


def method_orders(rows_by_model: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (task/metric, target): the paper-mode methods (``none`` and parity modes left out) that every model ran,
    ordered by ascending Δ vs none on each model (ties, equal to the shown 3 digits, grouped with ``=``); whether
    that order is the same on every model; and each method's Δ to UTRC per model (the one pairwise relation that
    has a paired interval; an order between two other methods is a point estimate only)."""
    from tor_exp.reduction.parity import is_parity

    ref = f"vs_{REFERENCE_METHOD}"
    models = list(rows_by_model)
    targets = set(r["target"] for rows in rows_by_model.values() for r in rows if r["method"] != "none")
    orders = []
    for key in _shared_keys(rows_by_model):
        for target in sorted(targets, key=lambda t: (t is None, t or 0.0)):
            per_model = {model: {r["method"]: r for r in rows if r["target"] == target and r["method"] != "none"
                                 and not is_parity(r["method"]) and key in r["vs_none"]}
                         for model, rows in rows_by_model.items()}
            common = sorted(set.intersection(*(set(found) for found in per_model.values())))
            if len(common) < 2:
                continue
            groups: dict[str, list[list[str]]] = {}
            for model in models:
                deltas = {m: round(per_model[model][m]["vs_none"][key]["delta"], 3) for m in common}
                ranked = sorted(common, key=lambda m: (deltas[m], m))
                groups[model] = []
                for m in ranked:
                    if groups[model] and deltas[groups[model][-1][0]] == deltas[m]:
                        groups[model][-1].append(m)
                    else:
                        groups[model].append([m])
            relations = {m: {model: per_model[model][m][ref].get(key) for model in models}
                         for m in common if m != REFERENCE_METHOD}
            orders.append({"key": key, "target": target, "methods": common,
                           "order": {model: " < ".join(" = ".join(g) for g in groups[model]) for model in models},
                           "same": all(groups[model] == groups[models[0]] for model in models),
                           "vs_reference": relations})
    return orders


def _relation(method: str, diffs: dict[str, Optional[dict[str, Any]]]) -> str:
    """``evit < utrc on all`` / ``… on `a`, `b``` (the models where the Δ to UTRC is resolved), ``**disagree**``
    where two models resolve it with opposite signs; empty where no model resolves it."""
    signs = {model: _resolved_sign(d) for model, d in diffs.items() if d}
    up = [m for m, s in signs.items() if s > 0]
    down = [m for m, s in signs.items() if s < 0]
    if up and down:
        return f"{method} vs {REFERENCE_METHOD}: **disagree** (> on {', '.join(f'`{m}`' for m in up)}; < on " \
               f"{', '.join(f'`{m}`' for m in down)})"
    if not (up or down):
        return ""
    where = "all" if len(up) + len(down) == len(diffs) else ", ".join(f"`{m}`" for m in up + down)
    return f"{method} {'>' if up else '<'} {REFERENCE_METHOD} on {where}"


def _target(target: Any) -> str:
    return "–" if target is None else f"{100 * target:.0f} %"


def _counts(cells: list[dict[str, Any]], field: str) -> str:
    kinds = [verdict_kind(c[field]) for c in cells if c[field] != "–"]
    shown = [f"{kinds.count(kind)} {kind}" for kind in VERDICTS if kinds.count(kind)]
    return f"{len(kinds)} cells: " + (", ".join(shown) if shown else "none to compare")


def agreement_summary(rows_by_model: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The section's answer in one place: cells per verdict (vs none and vs UTRC), every resolved disagreement,
    and whether the paper-mode methods' order by Δ vs none is the same on every model."""
    cells = agreement_cells(rows_by_model)
    orders = method_orders(rows_by_model)
    ref = REFERENCE_METHOD
    lines = [f"- Δ vs none: {_counts(cells, 'verdict_none')}.",
             f"- Δ vs UTRC: {_counts(cells, f'verdict_{ref}')}."]
    disagree = [f"{c['key']}, {c['method']} at {_target(c['target'])}, vs {label}: {c[field]}"
                for c in cells for label, field in (("none", "verdict_none"), ("UTRC", f"verdict_{ref}"))
                if verdict_kind(c[field]) == "**disagree**"]
    lines.append("- Resolved disagreements: " + ("none." if not disagree else f"{len(disagree)}:"))
    lines += [f"  - {d}" for d in disagree]
    if orders:
        same = [o for o in orders if o["same"]]
        lines.append(f"- Order of the paper-mode methods by Δ vs none: the same on every model in {len(same)} of "
                     f"{len(orders)} (task/metric, target) groups"
                     + ("." if len(same) == len(orders) else "; different in "
                        + "; ".join(f"{o['key']} at {_target(o['target'])}" for o in orders if not o["same"]) + "."))
        claimed = [f"{o['key']} at {_target(o['target'])}: {rel}" for o in orders
                   for m, diffs in o["vs_reference"].items() if (rel := _relation(m, diffs)) and " on all" in rel]
        conflicts = sum(verdict_kind(c[f"verdict_{ref}"]) == "**disagree**" for c in cells)
        lines.append("  An order is a point estimate: only a method's relation to UTRC has a paired interval. "
                     "Relations to UTRC resolved with the same sign on every model: "
                     + ("none" if not claimed else "; ".join(claimed)) + ". "
                     + ("No relation to UTRC is resolved with opposite signs on two models, so where the orders "
                        "differ they differ in unresolved relations only." if not conflicts else
                        f"{conflicts} relation(s) to UTRC resolved with opposite signs on two models (listed "
                        "above): there the order differs between architectures."))
    return lines


def render_agreement(rows_by_model: dict[str, list[dict[str, Any]]]) -> str:
    """Per method and target, each metric's Δ vs none and vs UTRC on every model (in ``rows_by_model``'s order), the
    :func:`verdict` across them, a summary above (:func:`agreement_summary`) and the methods' order on each model."""
    models = list(rows_by_model)
    ref = f"vs_{REFERENCE_METHOD}"
    names = ", ".join(f"`{m}`" for m in models)
    lines = [f"## Do the {_NUMBER_WORDS.get(len(models), len(models))} architectures agree? ({names})", "",
             "For each method and target: the difference to `none` and to UTRC on each model, and whether the models "
             "resolve it with the same sign: all of them (*agree (all resolved)*), none (*agree (none resolved)*), "
             "only some, the others' intervals including 0 (*same sign where resolved (k of N)*), or two models with "
             "opposite signs (**disagree**, + and − name the models on each side). A model that lacks a cell is "
             "left out of its verdict.", "", "### Summary", "", *agreement_summary(rows_by_model), ""]
    orders = method_orders(rows_by_model)
    if orders:
        lines += ["### Order of the paper-mode methods", "",
                  "Per target, the paper-mode methods every model ran, by ascending Δ vs none on each model (`=`: "
                  "equal to 3 digits). *resolved vs UTRC* lists each method whose Δ to UTRC at that target is "
                  "resolved, and on which models: the only relations in the order that a paired interval backs.", ""]
        for key in dict.fromkeys(o["key"] for o in orders):
            lines += [f"#### {key.replace('/', ': ', 1)}", "",
                      "| target | " + " | ".join(f"order on `{m}`" for m in models)
                      + " | same order | resolved vs UTRC |",
                      "|---|" + "---|" * (len(models) + 2)]
            for o in (o for o in orders if o["key"] == key):
                relations = "; ".join(r for m, diffs in o["vs_reference"].items()
                                      if (r := _relation(m, diffs))) or "–"
                lines.append(f"| {_target(o['target'])} | " + " | ".join(o["order"][m] for m in models)
                             + f" | {'yes' if o['same'] else 'no'} | {relations} |")
            lines.append("")
    cells = agreement_cells(rows_by_model)
    for key in _shared_keys(rows_by_model):
        task, metric = key.split("/", 1)
        lines += [f"### {task}: {metric}", "",
                  "| method | target | " + " | ".join(f"Δ vs none `{m}`" for m in models) + " | vs none | "
                  + " | ".join(f"Δ vs UTRC `{m}`" for m in models) + " | vs UTRC |",
                  "|---|---|" + "---|" * (2 * len(models) + 2)]
        for c in (c for c in cells if c["key"] == key):
            lines.append(f"| {c['method']} | {_target(c['target'])} | "
                         + " | ".join(_cell(c["vs_none"][m]) for m in models) + f" | {c['verdict_none']} | "
                         + " | ".join(_cell(c[ref][m]) for m in models) + f" | {c[f'verdict_{REFERENCE_METHOD}']} |")
        lines.append("")
    return "\n".join(lines)


def write_quality(records: Sequence[dict[str, Any]], prefix: Path, *, title: str, notes: Sequence[str] = (),
                  iters: int = 1000) -> dict[str, Path]:
    """``<prefix>.md``, ``<prefix>.json`` and ``<prefix>.png`` for the sweep's records (with :func:`provenance`
    notes after the given ones). A sweep over several models gets one section per model (and ``<prefix>.<model>.png``
    beyond the first) and a section on whether all of them agree (:func:`render_agreement`). Models come in the
    order of their names, so the document does not depend on the order the records were read in."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: str(r.get("model"))):  # stable: each model's records keep their order
        by_model.setdefault(str(record.get("model")), []).append(record)
    rows_by_model = {model: quality_rows(group, iters=iters) for model, group in by_model.items()}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": prefix.with_suffix(".md"), "json": prefix.with_suffix(".json")}
    if len(by_model) == 1:
        ((model, rows),) = rows_by_model.items()
        text = render_quality_markdown(rows, title=title, notes=[*notes, *provenance(by_model[model], rows, iters)])
        paths["json"].write_text(json.dumps({"rows": rows, "iters": iters}, indent=1) + "\n")
        paths["plot"] = plot_quality(rows, prefix.with_suffix(".png"))
    else:
        sections = []
        for i, (model, rows) in enumerate(rows_by_model.items()):
            plot = prefix.with_suffix(".png") if i == 0 else prefix.with_name(f"{prefix.name}.{model}.png")
            paths["plot" if i == 0 else f"plot_{model}"] = plot_quality(rows, plot)
            body = render_quality_markdown(rows, title=f"Model `{model}`", notes=provenance(by_model[model], rows,
                                                                                            iters))
            sections.append("\n".join(("#" + line) if line.startswith("#") else line for line in body.splitlines())
                            + f"\n\n![Δ vs none against realised FLOPs, `{model}`]({plot.name})\n")
        text = "\n".join([f"# {title}", "", *notes, "", *sections, render_agreement(rows_by_model)])
        paths["json"].write_text(json.dumps({"models": rows_by_model, "iters": iters}, indent=1) + "\n")
    paths["markdown"].write_text(text + "\n")
    return paths
