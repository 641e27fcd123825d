#!/usr/bin/env bash
# Run HERE (a machine with package-index access), before a GPU session: fetches what launchers/gpu_bench.sh
# installs on the offline GPU machine, into two git-ignored folders the device tool carries:
#   .whl/     wheels: transformers at the version this checkout is tested with + huggingface_hub 1.x (the GPU image
#             has an older transformers whose Mamba-2 cache API differs), einops (mamba_ssm needs it),
#             nvidia-ml-py (NVML peak memory)
#   .vendor/  mamba_ssm's Python sources from its sdist (no CUDA build: its Triton kernels are enough for
#             Mamba-2) + an empty `selective_scan_cuda` stub so `import mamba_ssm` succeeds without the
#             compiled Mamba-1 scan
# Usage: bash launchers/prepare_gpu_carry.sh    (about 15 MB; the device tool's carry limit is 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
MAMBA_SSM_VERSION="${MAMBA_SSM_VERSION:-2.3.2.post1}"
tf=$(python -c "import transformers; print(transformers.__version__)")
rm -rf .whl .vendor
mkdir -p .whl .vendor/mamba .vendor/stubs
# huggingface_hub 1.x (httpx-based, as on the GPU image); 2.x would need httpx2
pip download --no-deps -q -d .whl "transformers==$tf" "huggingface_hub>=1.31,<2" einops nvidia-ml-py
tmp=$(mktemp -d)
# the sdist's metadata step runs setup.py: skip its CUDA build
MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: --no-build-isolation -q -d "$tmp" \
    "mamba-ssm==$MAMBA_SSM_VERSION"
tar -xzf "$tmp"/mamba_ssm-*.tar.gz -C "$tmp"
cp -r "$tmp"/mamba_ssm-*/mamba_ssm .vendor/mamba/
cp "$tmp"/mamba_ssm-*/LICENSE .vendor/mamba/LICENSE.mamba_ssm
rm -rf "$tmp"
find .vendor -name "__pycache__" -prune -exec rm -rf {} +
printf '"""Stub: the compiled Mamba-1 selective scan is not available; Mamba-2 uses Triton kernels."""\n' \
    > .vendor/stubs/selective_scan_cuda.py
du -sh .whl .vendor
ls .whl
