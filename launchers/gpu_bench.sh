#!/usr/bin/env bash
# ONE prepared GPU benchmark run (H100/H200, offline): every bench preset at paper scale on a random-weight
# Mamba-2-2.7B-shaped model (model.source=random), `none` and UTRC at 10/20/30 % FLOPs in the same process, each
# preset one ordinary `task=bench` job (tor_exp.run.run) in $OUT/<preset>/.
#
# Before the GPU session, here:   bash launchers/prepare_gpu_carry.sh      (fills .whl/ and .vendor/)
# Device tool call (docs/benchmarks.md):
#   run(command="bash launchers/gpu_bench.sh", carry=[".whl", ".vendor"], timeout_s=560)
# Results (files under $OUT come back): summary.md, summary.json, log.txt, <preset>/results.json (the schema of
# every job), <preset>/bench_<preset>.md and .png, <preset>/tor_exp.log; with 2+ GPUs (or DP_BENCH=1) the data-parallel check: dp_summary.txt,
# dp/n*/results.json, dp_n*.log. Extra arguments go to launchers/gpu_bench.py
# (e.g. --presets prefill,generate, --set generate.new_tokens=50, --method utrc_official, --override model.seed=1).
#
# What it does, each step tolerant of a missing piece (a fallback is printed, never silent):
#  1. carried wheels (.whl/: transformers at this checkout's version, huggingface_hub 1.x, einops,
#     nvidia-ml-py) go into a private folder on PYTHONPATH (the machine's own packages stay untouched; if
#     the carried ones fail to import they are dropped again);
#  2. mamba_ssm's Python sources (.vendor/mamba) + an empty `selective_scan_cuda` stub (.vendor/stubs) go on
#     PYTHONPATH, so transformers uses mamba_ssm's Triton SSD kernels for the Mamba-2 prefill and the decode
#     step uses its Triton state update / norms (no CUDA compilation needed);
#  3. `pip install --no-deps -e .` (falls back to the repo root on PYTHONPATH);
#  4. launchers/gpu_bench.py under a time limit (BENCH_TIMEOUT, default 420 s), then the tables are printed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/outputs/gpu_bench}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
t0=$(date +%s)
echo "[gpu_bench.sh] $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); OUT=$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"

SITE="$ROOT/.vendor/site"
if ls .whl/*.whl >/dev/null 2>&1; then
    rm -rf "$SITE"
    pip install --no-deps --no-index --quiet --disable-pip-version-check --target "$SITE" .whl/*.whl \
        || echo "[gpu_bench.sh] installing the carried wheels failed: using the machine's packages"
else
    echo "[gpu_bench.sh] no .whl/ carried: using the machine's transformers (run launchers/prepare_gpu_carry.sh)"
fi
PP="$ROOT"
if [ -d .vendor/mamba/mamba_ssm ]; then
    PP="$PP:$ROOT/.vendor/mamba:$ROOT/.vendor/stubs"
else
    echo "[gpu_bench.sh] no .vendor/mamba carried: transformers falls back to its torch SSD (slow)"
fi
BASE_PYTHONPATH="${PYTHONPATH:-}"
export PYTHONPATH="$SITE:$PP${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}"
if ! python -c "import transformers, huggingface_hub, tor_exp.models" >/dev/null 2>&1; then
    echo "[gpu_bench.sh] the carried packages do not import here: dropped"
    python -c "import transformers, tor_exp.models" 2>&1 | tail -3
    export PYTHONPATH="$PP${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}"
fi
if [ -z "${SKIP_EDITABLE:-}" ]; then  # SKIP_EDITABLE=1: dry runs on a shared machine
    pip install --no-deps --no-build-isolation --quiet --disable-pip-version-check -e . >/dev/null 2>&1 \
        || echo "[gpu_bench.sh] editable install failed: tor_exp is imported from the repo root (PYTHONPATH)"
fi
python - <<'PY'
import importlib
for name in ("torch", "transformers", "triton", "mamba_ssm", "pynvml"):
    try:
        mod = importlib.import_module(name)
        print(f"[gpu_bench.sh] {name} {getattr(mod, '__version__', '?')} from {getattr(mod, '__file__', '?')}")
    except Exception as exc:
        print(f"[gpu_bench.sh] {name}: not importable ({type(exc).__name__}: {str(exc)[:200]})")
PY
echo "[gpu_bench.sh] setup took $(( $(date +%s) - t0 )) s"

timeout --signal=INT "${BENCH_TIMEOUT:-420}" python launchers/gpu_bench.py --out "$OUT" "$@"
rc=$?
[ $rc -eq 124 ] && echo "[gpu_bench.sh] gpu_bench.py hit BENCH_TIMEOUT; tables of the finished presets are in $OUT"

# Data-parallel evaluation (README "Multi-GPU (data parallel)"): one process vs one per GPU on the reference
# model's full tasks, same numbers expected (bits/byte within 1e-6, same accuracy and token ledger). Runs when
# 2+ GPUs are visible, or with DP_BENCH=1 on one GPU (2 ranks share it: checks the CUDA path, not the speed-up).
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [ "${NGPU:-0}" -ge 2 ] || [ -n "${DP_BENCH:-}" ]; then
    NPROC=$(( NGPU >= 2 ? NGPU : 2 ))
    DPJOB="model=reference eval=reference eval.compare_baseline=false eval.bootstrap_iters=0 device=cuda"
    for n in 1 "$NPROC"; do
        t1=$(date +%s.%N)
        if [ "$n" = 1 ]; then
            timeout "${DP_TIMEOUT:-240}" python -m tor_exp $DPJOB hydra.run.dir="$OUT/dp/n1" >"$OUT/dp_n1.log" 2>&1
        else
            timeout "${DP_TIMEOUT:-240}" torchrun --standalone --nproc_per_node "$n" -m tor_exp $DPJOB \
                hydra.run.dir="$OUT/dp/n$n" >"$OUT/dp_n$n.log" 2>&1
        fi
        echo "[gpu_bench.sh] data parallel: $n process(es): exit $? after $(python -c "import time;print(round(time.time()-$t1,1))") s wall"
    done
    python - "$OUT/dp" <<'PY' | tee "$OUT/dp_summary.txt"
import json, sys
from pathlib import Path
runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("n*/results.json"))}
for name, r in runs.items():
    m = r["metrics"]
    print(name, "eval_s", round(r["timings"].get("eval_utrc_s", 0), 1), "bpb", m["reference_heldout"]["bits_per_byte"],
          "mc_acc", m["reference_heldout_mc"]["acc"], "realised", r["realised_flops_reduction"])
if "n1" in runs and len(runs) == 2:
    other = next(v for k, v in runs.items() if k != "n1")
    print("same tokens:", other["tokens_per_task"] == runs["n1"]["tokens_per_task"],
          "speed-up (eval):", round(runs["n1"]["timings"]["eval_utrc_s"] / other["timings"]["eval_utrc_s"], 2))
PY
fi
rm -rf "$SITE"
echo "[gpu_bench.sh] exit $rc after $(( $(date +%s) - t0 )) s"
exit $rc
