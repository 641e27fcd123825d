"""Driver of launchers/gpu_bench.sh: every bench preset at paper scale on random weights of a real model's shape.

Each preset is one ordinary job, run through :func:`tor_exp.run.run` exactly as
``python -m tor_exp task=bench model=<m> model.source=random reduction=<r> bench=<preset> bench.batch_sizes=[16] ...``
runs it (config composed with tor_exp.config.compose_dict, validated by the job), in ``<out>/<preset>/``: so each
preset's results.json has the schema of every job (task=bench, checkpoint ``weights: random``, kernels, versions),
beside bench_<preset>.md/.png. ``model.source=random`` builds the model of ``<m>``'s shape directly on the device
with random weights drawn with ``model.seed`` (speed and memory do not depend on the weights; no checkpoint is
downloaded or read); each job builds its own (seconds on a GPU).

Writes <out>/<preset>/ (the job's folder), <out>/summary.md and <out>/summary.json (from the jobs' results).
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


def job_overrides(model: str, method: str, preset: str, dtype: str, device: str, tokenizer: str,
                  values: dict[str, Any], extra: list[str]) -> list[str]:
    """The Hydra overrides of one preset's job (``values``: bench keys → values, written as JSON)."""
    overrides = [f"model={model}", "model.source=random", f"reduction={method}", "task=bench", f"bench={preset}",
                 f"model.dtype={dtype}", f"device={device}", "logger=disk", "resume=false", "overwrite=true"]
    if tokenizer:
        overrides.append(f"model.tokenizer={tokenizer}")
    overrides += [f"bench.{key}={json.dumps(value)}" for key, value in values.items()]
    return overrides + list(extra)


def run_preset(overrides: list[str], folder: Path) -> dict[str, Any]:
    """One preset as one job (:func:`tor_exp.run.run`): its results dict, also in ``folder``/results.json."""
    from tor_exp.config import compose_dict
    from tor_exp.run import run

    return run(compose_dict(overrides), out_dir=folder)


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
    parser.add_argument("--model", default="mamba2_2.7b",
                        help="a conf/model/ name or a checkpoint directory (its shape; random weights)")
    parser.add_argument("--method", default="utrc", help="a conf/reduction/ name")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--scale", choices=sorted(SCALES), default="paper")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokenizer", default="byte",
                        help="model.tokenizer of the jobs (default byte: offline, and random weights need no real "
                             "one; it only feeds calibrated methods' calibration text); '' = the model config's")
    parser.add_argument("--set", action="append", default=[], metavar="PRESET.KEY=JSON",
                        help="extra bench override, e.g. generate.new_tokens=50 or prefill.batch_sizes=[1,16]")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for every preset's job, e.g. model.seed=1 or model.family=mamba2")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    env["scale"], env["jobs"] = args.scale, {}
    print(json.dumps(env, indent=2), flush=True)

    extra: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        preset, _, field = key.partition(".")
        extra.setdefault(preset, {})[field] = json.loads(value)

    tables, summary, status = [], {}, {}
    for preset in [p for p in args.presets.split(",") if p]:
        data = {**SCALES[args.scale][preset], **extra.get(preset, {})}
        overrides = job_overrides(args.model, args.method, preset, args.dtype, args.device, args.tokenizer, data,
                                  args.override)
        env["jobs"][preset] = overrides
        print(f"\n[gpu_bench] {preset}: python -m tor_exp {' '.join(overrides)}", flush=True)
        t1 = time.perf_counter()
        try:
            res = run_preset(overrides, out / preset)
            status[preset] = "ok"
        except Exception as exc:  # noqa: BLE001 - keep going: the other presets still produce tables
            traceback.print_exc()
            (out / preset).mkdir(parents=True, exist_ok=True)
            (out / preset / "error.txt").write_text(traceback.format_exc())
            status[preset] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            continue
        finally:
            if args.device == "cuda":
                import torch

                torch.cuda.empty_cache()
        seconds = time.perf_counter() - t1
        if "model" not in env:  # what every job ran on (the same shape, seed and dtype in each)
            env["model"] = {"name": res["model"], "shape_of": res["config"]["model"].get("path"),
                            "weights": res["checkpoint"].get("weights"), "seed": res["checkpoint"].get("seed"),
                            "dtype": res["dtype"], "load_s": round(res["timings"].get("load_s", 0.0), 2)}
            env["kernels"] = res.get("kernels")
            print(f"[gpu_bench] model {env['model']}\n[gpu_bench] kernels {env['kernels']}", flush=True)
        summary.update(res["bench_summary"])
        tables.append(f"### {preset} ({seconds:.0f} s)\n\n" + res["bench"]["markdown"])
        if preset == "generate" and res["bench"]["rows"]:
            tables[-1] += f"\n\ndecode kernels: {res['bench']['rows'][0].get('decode_kernels')}"
        # written after every preset, so a run stopped by its time limit still leaves the finished tables
        write_summary(out, env, args.model, args.method, args.dtype, status, tables, summary)

    write_summary(out, env, args.model, args.method, args.dtype, status, tables, summary, final=True)
    return 0 if status and all(v == "ok" for v in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
