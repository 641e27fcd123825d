"""One Hydra job: load → (calibrate) → patch → evaluate / benchmark / generate → results.json (+ W&B)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tor_exp.config import ValidatedConfig, register_configs, validate
from tor_exp.logging.results import config_hash, is_complete, load_results, run_metadata, write_results



def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from tor_exp.errors import ConfigError

        raise ConfigError("device='cuda': no CUDA device is available (use device=cpu or device=auto)")
    return torch.device(name)


def output_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # called outside a Hydra job (tests, notebooks)
        return Path.cwd()


def run_label(v: ValidatedConfig) -> str:
    if v.root.run_name:
        return v.root.run_name
    red = v.reduction
    amount = f"rho{red.keep_ratio:g}" if red.keep_ratio is not None else f"f{(red.target_flops or 0):g}"
    return f"{v.model.name}-{red.method}" + ("" if red.method == "none" else f"-{amount}")


def sweep_group() -> str | None:
    """All jobs of one multirun share a W&B group: the sweep dir's name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode is not None and hc.mode.name == "MULTIRUN":
            return Path(hc.sweep.dir).name
    except ValueError:
        pass
    return None


def run(cfg: DictConfig, out_dir: Path | None = None) -> float | None:
    """Run the job the config describes; returns the headline number (mean accuracy for eval) for sweepers."""
    register_configs()
    v = validate(cfg)
    out_dir = Path(out_dir) if out_dir is not None else output_dir()
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    chash = config_hash(resolved)
    if v.root.resume and is_complete(out_dir, resolved):
        print(f"[tor_exp] results for this config already in {out_dir / 'results.json'}: skipped (resume=true)")
        return (load_results(out_dir) or {}).get("headline")

    torch.manual_seed(v.root.seed)
    device = resolve_device(v.root.device)
    timings: dict[str, float] = {}

    from tor_exp.models import ModelShape, build_schedule, load_model

    t0 = time.perf_counter()
    model_cfg = v.model
    if v.root.dtype is not None:
        model_cfg.dtype = v.root.dtype
    model, tokenizer = load_model(model_cfg, device=device)
    timings["load_s"] = time.perf_counter() - t0
    schedule = build_schedule(v.reduction, v.model, shape=ModelShape.from_hf_config(model.config))

    results: dict[str, Any] = {
        "config_hash": chash,
        "task": v.root.task,
        "run_name": run_label(v),
        "model": v.model.name,
        "method": v.reduction.method,
        "target_flops": v.reduction.target_flops if v.reduction.keep_ratio is None else None,
        "keep_ratio": schedule.keep_ratio,
        "locations": list(schedule.locations),
        "device": str(device),
        "dtype": model_cfg.dtype,
    }
    headline: float | None = None
    if v.root.task == "eval":
        headline = _run_eval(v, model, tokenizer, schedule, results, timings)
    elif v.root.task == "bench":
        from tor_exp.bench import run_benchmark

        t0 = time.perf_counter()
        results.update(run_benchmark(model, tokenizer, v.model, v.reduction, v.bench, out_dir=out_dir, device=device))
        timings["bench_s"] = time.perf_counter() - t0
    else:
        _run_generate(v, model, tokenizer, schedule, results, timings)

    results["headline"] = headline
    results["timings"] = timings
    results.update(run_metadata())
    results["config"] = resolved
    results["status"] = "complete"  # resume trusts only complete records
    path = write_results(out_dir, results)
    print(f"[tor_exp] results: {path}")
    if v.logger.backend == "wandb":
        from tor_exp.logging.wandb_logger import log_to_wandb

        log_to_wandb(v.logger, results, out_dir, results["run_name"], sweep_group())
    return headline


def calibration_text(source: str | None) -> str:
    """The model's calibration text (.txt, or .jsonl with a "text" field), else the bundled generic one."""
    import json

    from tor_exp.paths import resolve_pkg_path

    path = Path(resolve_pkg_path(source, "model.calibration_text")) if source else \
        Path(__file__).parent / "assets" / "calibration.txt"
    if not path.is_file():
        from tor_exp.errors import ConfigError

        raise ConfigError(f"model.calibration_text={source!r}: no such file ({path})")
    if path.suffix == ".jsonl":
        return "\n\n".join(json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip())
    return path.read_text()


def calibrate_if_needed(method: Any, model: Any, tokenizer: Any, device: torch.device, text: str | None = None, *,
                        seq_len: int = 128, batch_size: int = 4, max_sequences: int = 64) -> int:
    """Methods with post-training thresholds (LTMP) see calibration text first; never the evaluation items.

    ``text`` defaults to the bundled generic paragraphs. Returns the number of calibration sequences used (0 when
    the method needs none).
    """
    if not hasattr(method, "calibrating") or getattr(method, "thresholds", None):
        return 0  # no calibration needed, or thresholds already loaded (e.g. reduction.thresholds_file)
    from tor_exp.models import reduced_forward

    text = calibration_text(None) if text is None else text

    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len // 2)][:max_sequences] or [ids]
    with method.calibrating(), torch.no_grad():
        for i in range(0, len(chunks), batch_size):
            batch = torch.stack(chunks[i:i + batch_size]).to(device)
            reduced_forward(model, batch, logits="last")
    return len(chunks)


def _evaluate_with(method_name: str, v: ValidatedConfig, model: Any, tokenizer: Any, schedule: Any,
                   timings: dict[str, float], device: torch.device) -> dict[str, Any]:
    from tor_exp.evaluation.runner import evaluate
    from tor_exp.models import patch, unpatch
    from tor_exp.reduction import build_method

    t0 = time.perf_counter()
    if method_name == "none":
        out = evaluate(model, tokenizer, v.eval, reduction_label="none")
        timings["eval_none_s"] = time.perf_counter() - t0
        return out
    method = build_method(v.reduction)
    patch(model, method, schedule)
    try:
        text = calibration_text(v.model.calibration_text)
        timings["calibration_sequences"] = calibrate_if_needed(method, model, tokenizer, device, text)
        out = evaluate(model, tokenizer, v.eval, reduction_label=method_name)
    finally:
        unpatch(model)
    timings[f"eval_{method_name}_s"] = time.perf_counter() - t0
    return out


def _run_eval(v: ValidatedConfig, model: Any, tokenizer: Any, schedule: Any, results: dict[str, Any],
              timings: dict[str, float]) -> float | None:
    device = next(model.parameters()).device
    method_name = v.reduction.method
    rows: list[tuple[str, dict[str, Any]]] = []
    if v.eval.compare_baseline and method_name != "none":
        baseline = _evaluate_with("none", v, model, tokenizer, schedule, timings, device)
        results["baseline"] = {"method": "none", "metrics": baseline["metrics"]}
        rows.append(("none", baseline))
    out = _evaluate_with(method_name, v, model, tokenizer, schedule, timings, device)
    rows.append((method_name, out))
    results["metrics"] = out["metrics"]
    results["flops_per_task"] = out.get("flops", {})
    results["alignment"] = out.get("alignment", {})
    results["num_requests"] = out.get("num_requests")
    realised = [r for r in (out.get("flops") or {}).values() if isinstance(r, (int, float))]
    results["realised_flops_reduction"] = sum(realised) / len(realised) if realised else 0.0
    print_comparison(rows, results)
    return mean_accuracy(out["metrics"])


def _run_generate(v: ValidatedConfig, model: Any, tokenizer: Any, schedule: Any, results: dict[str, Any],
                  timings: dict[str, float]) -> None:
    from tor_exp.models import patch, unpatch
    from tor_exp.models.generation import generate_text
    from tor_exp.reduction import build_method

    patched = v.reduction.method != "none"
    if patched:
        patch(model, build_method(v.reduction), schedule)
    t0 = time.perf_counter()
    try:
        text = generate_text(model, tokenizer, v.root.prompt, max_new_tokens=v.root.max_new_tokens)
    finally:
        if patched:
            unpatch(model)
    timings["generate_s"] = time.perf_counter() - t0
    results["prompt"] = v.root.prompt
    results["continuation"] = text
    print(f"{v.root.prompt}\033[1m{text}\033[0m")


def task_columns(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(task, metric, header) per table column: the paper's metric per task (acc_norm for HellaSwag and ARC-C,
    LAMBADA perplexity and acc), else the first of acc_norm/acc/perplexity a task reports."""
    from tor_exp.reporting.collect import COLUMN_METRICS, task_column

    columns = []
    for task in sorted(metrics):
        reported = {k.split(",", 1)[0] for k in metrics[task]}
        stem = task_column(task)
        if stem == "lambada":
            wanted = ["perplexity", "acc"]
        elif stem is not None:
            wanted = [next((m for m in COLUMN_METRICS[stem] if m in reported), COLUMN_METRICS[stem][0])]
        else:  # e.g. the reference model's held-out task: its perplexity first, then its accuracy
            wanted = [m for m in ("byte_perplexity", "perplexity", "acc_norm", "acc") if m in reported][:2]
        short = task.replace("_fixture", "").replace("_openai", "")
        columns += [(task, m, f"{short} {m.replace('byte_perplexity', 'ppl/byte').replace('perplexity', 'ppl')}")
                    for m in wanted if m in reported]
    return columns


def mean_accuracy(metrics: dict[str, dict[str, Any]]) -> float | None:
    """The paper's "Avg.": mean over the paper's tasks of each one's metric (acc_norm for HellaSwag/ARC-C, else
    acc); tasks outside the paper's six count only when none of the six was run."""
    from tor_exp.reporting.collect import task_column

    columns = task_columns(metrics)
    if any(task_column(task) for task, _, _ in columns):  # paper tasks present: average those only
        columns = [c for c in columns if task_column(c[0])]
    values = []
    for task, metric, _ in columns:
        value = metrics[task].get(metric)
        if metric in ("acc", "acc_norm") and isinstance(value, (int, float)) and not math.isnan(value):
            values.append(float(value))
    return sum(values) / len(values) if values else None


def print_comparison(rows: list[tuple[str, dict[str, Any]]], results: dict[str, Any]) -> None:
    import shutil

    from rich.console import Console
    from rich.table import Table

    columns = task_columns(rows[-1][1]["metrics"])
    table = Table(title=f"{results['model']}: target FLOPs reduction {results.get('target_flops')}, "
                        f"keep ratio {results['keep_ratio']:.4f}, locations {results['locations']}")
    table.add_column("method")
    table.add_column("FLOPs ↓ (realised)", justify="right")
    for _, _, header in columns:
        table.add_column(header, justify="right")
    table.add_column("avg acc", justify="right")
    for name, out in rows:
        flops = [x for x in (out.get("flops") or {}).values() if isinstance(x, (int, float))]
        cells = [name, f"{100 * sum(flops) / len(flops):.1f}%" if flops else "0.0%"]
        for task, metric, _ in columns:
            value = out["metrics"].get(task, {}).get(metric)
            cells.append("–" if value is None else (f"{value:.4g}" if "perplexity" in metric else f"{value:.3f}"))
        avg = mean_accuracy(out["metrics"])
        cells.append("–" if avg is None else f"{avg:.3f}")
        table.add_row(*cells)
    Console(width=max(160, shutil.get_terminal_size().columns)).print(table)
