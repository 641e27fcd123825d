"""Driver of launchers/gpu_bench.sh: every bench preset at paper scale on one random-weight model, in one process.

Each preset's config is composed exactly as ``python -m tor_exp task=bench model=<m> reduction=<r> bench=<preset>
bench.batch_sizes=[16] ...`` composes it (tor_exp.config.compose, validated), with the paper-scale overrides below;
what differs from that command is only that the model is built once, directly on the GPU, with random weights of
the real shape, instead of loading a checkpoint per preset.

Writes <out>/<preset>/results.json (+ bench_<preset>.md/.png), <out>/summary.md and <out>/summary.json.
``--scale cpu`` runs the same code with tiny shapes (a check of this script on a machine without a GPU).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESETS = ("prefill", "overhead", "generate", "memory")
# the paper's settings (Section 5: batch 16 × 2048 with 100 new tokens; memory at batch 96 × 2048)
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        # the chunk-aligned schedule beside the plain one (reduction.chunk_align; mamba_ssm's SSD works in chunks)
        "prefill": {"batch_sizes": [16], "seq_lens": [2048], "warmup": 2, "repeats": 5, "chunk_align": "both"},
        "overhead": {"batch_sizes": [16], "seq_lens": [2048], "warmup": 1, "repeats": 5},
        "generate": {"batch_sizes": [16], "seq_lens": [2048], "new_tokens": 100, "warmup": 1, "repeats": 3},
        "memory": {"batch_sizes": [96], "seq_lens": [2048], "warmup": 0},
    },
    "cpu": {
        "prefill": {"batch_sizes": [2], "seq_lens": [64], "warmup": 1, "repeats": 2, "chunk_align": "both"},
        "overhead": {"batch_sizes": [2], "seq_lens": [64], "warmup": 1, "repeats": 2},
        "generate": {"batch_sizes": [2], "seq_lens": [64], "new_tokens": 5, "warmup": 1, "repeats": 2},
        "memory": {"batch_sizes": [2], "seq_lens": [64], "warmup": 0},
    },
}


def preset_config(model: str, method: str, preset: str, dtype: str, values: dict[str, Any]):
    """The validated config of one preset run (``values``: bench keys → values, written as Hydra overrides)."""
    from tor_exp.config import compose

    overrides = [f"model={model}", f"reduction={method}", "task=bench", f"bench={preset}", f"model.dtype={dtype}"]
    overrides += [f"bench.{key}={json.dumps(value)}" for key, value in values.items()]
    return compose(overrides)


def environment(device: str) -> dict[str, Any]:
    """Machine and versions, recorded next to every table (which kernels ran: ``kernels``, added once the model is
    built, from what transformers' modeling module resolved; an importable package alone says nothing)."""
    import torch

    env: dict[str, Any] = {"date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "command": " ".join([sys.executable] + sys.argv)}
    for pkg in ("transformers", "triton", "mamba_ssm", "causal_conv1d", "pynvml", "huggingface_hub"):
        try:
            mod = __import__(pkg)
            env[pkg] = getattr(mod, "__version__", "importable")
        except Exception as exc:  # noqa: BLE001 - record why, never fail here
            env[pkg] = f"not importable ({type(exc).__name__}: {str(exc)[:120]})"
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["nvidia_smi"] = None
    else:
        env["gpu"] = None
        env["cpu"] = platform.processor() or platform.machine()
        env["torch_threads"] = torch.get_num_threads()
    return env


def write_summary(out: Path, env: dict[str, Any], model: str, method: str, dtype: str, status: dict[str, str],
                  tables: list[str], summary: dict[str, float], final: bool = False) -> None:
    header = ["# tor_exp GPU benchmark", "", f"- date: {env['date_utc']}",
              f"- machine: {env.get('gpu') or env.get('cpu')} ({env.get('nvidia_smi') or ''})",
              f"- versions: torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, "
              f"triton {env['triton']}, mamba_ssm {env['mamba_ssm']}",
              f"- kernels that ran: {env.get('kernels')}",
              f"- model: {model} shape, random weights, {dtype}; method {method}; {env.get('model')}",
              f"- command: {env['command']}", f"- status: {status}", ""]
    text = "\n".join(header) + "\n" + "\n\n".join(tables) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"environment": env, "kernels": env.get("kernels"), "status": status,
                                                  "summary": summary},
                                                 indent=2, default=str))
    if final:
        print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "outputs/gpu_bench"))
    parser.add_argument("--model", default="mamba2_2.7b", help="a conf/model/ name (its shape, random weights)")
    parser.add_argument("--method", default="utrc", help="a conf/reduction/ name")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--scale", choices=sorted(SCALES), default="paper")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--set", action="append", default=[], metavar="PRESET.KEY=JSON",
                        help="extra override, e.g. generate.new_tokens=50 or prefill.batch_sizes=[1,16]")
    args = parser.parse_args()

    import torch

    from tor_exp.bench import run_benchmark
    from tor_exp.models.random_model import random_model
    from tor_exp.models.kernels import kernels_used
    from tor_exp.records.results import run_metadata, write_results

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    print(json.dumps(env, indent=2), flush=True)

    first = preset_config(args.model, args.method, PRESETS[0], args.dtype, {})
    model_cfg, reduction_cfg = first.model, first.reduction

    t0 = time.perf_counter()
    model = random_model(model_cfg, args.device, args.dtype)
    if args.device == "cuda":
        torch.cuda.synchronize()
    env["model"] = {"name": model_cfg.name, "shape_of": model_cfg.path or "tiny", "weights": "random",
                    "dtype": args.dtype, "parameters": sum(p.numel() for p in model.parameters()),
                    "build_s": round(time.perf_counter() - t0, 2)}
    print(f"[gpu_bench] model {env['model']}", flush=True)
    env["kernels"] = kernels_used(model, args.device)
    print(f"[gpu_bench] kernels {env['kernels']}", flush=True)

    extra: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        preset, _, field = key.partition(".")
        extra.setdefault(preset, {})[field] = json.loads(value)

    tables, summary, status = [], {}, {}
    for preset in [p for p in args.presets.split(",") if p]:
        data = {**SCALES[args.scale][preset], **extra.get(preset, {})}
        bench_cfg = preset_config(args.model, args.method, preset, args.dtype, data).bench
        t1 = time.perf_counter()
        print(f"\n[gpu_bench] {preset}: {data}", flush=True)
        try:
            res = run_benchmark(model, None, model_cfg, reduction_cfg, bench_cfg, out_dir=out / preset,
                                device=args.device)
            status[preset] = "ok"
        except Exception as exc:  # noqa: BLE001 - keep going: the other presets still produce tables
            traceback.print_exc()
            (out / preset).mkdir(parents=True, exist_ok=True)
            (out / preset / "error.txt").write_text(traceback.format_exc())
            status[preset] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            continue
        finally:
            if args.device == "cuda":
                torch.cuda.empty_cache()
        seconds = time.perf_counter() - t1
        results = {"task": "bench", "model": model_cfg.name, "method": reduction_cfg.method, "scale": args.scale,
                   "bench_config": data, "environment": env, "seconds": seconds, **res,
                   **run_metadata(model, args.device)}
        write_results(out / preset, results)
        summary.update(res["bench_summary"])
        tables.append(f"### {preset} ({seconds:.0f} s)\n\n" + res["bench"]["markdown"])
        if preset == "generate" and res["bench"]["rows"]:
            tables[-1] += f"\n\ndecode kernels: {res['bench']['rows'][0].get('decode_kernels')}"
        # written after every preset, so a run stopped by its time limit still leaves the finished tables
        write_summary(out, env, model_cfg.name, reduction_cfg.method, args.dtype, status, tables, summary)

    write_summary(out, env, model_cfg.name, reduction_cfg.method, args.dtype, status, tables, summary, final=True)
    return 0 if all(v == "ok" for v in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
