#!/usr/bin/env bash
# ONE prepared GPU benchmark run (H100/H200, offline): every bench preset at paper scale on a random-weight
# Mamba-2-2.7B-shaped model, `none` and UTRC at 10/20/30 % FLOPs in the same process.
#
# Before the GPU session, here:   bash launchers/prepare_gpu_carry.sh      (fills .whl/ and .vendor/)
# Device tool call (docs/benchmarks.md):
#   run(command="bash launchers/gpu_bench.sh", carry=[".whl", ".vendor"], timeout_s=560)
# Results (files under $OUT come back): summary.md, summary.json, log.txt, <preset>/results.json,
# <preset>/bench_<preset>.md and .png. Extra arguments go to launchers/gpu_bench.py
# (e.g. --presets prefill,generate, --set generate.new_tokens=50, --method utrc_official).
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
rm -rf "$SITE"
echo "[gpu_bench.sh] exit $rc after $(( $(date +%s) - t0 )) s"
exit $rc
