#!/usr/bin/env bash
# Installs what tests/kernels needs into a separate folder (default: .kernels in the checkout, ignored by git), so
# that the main environment and the default test suite stay as they are: HF transformers takes other code paths when
# it can import mamba_ssm. triton from the registry; mamba-ssm built from its sdist with no CUDA extension
# (MAMBA_SKIP_CUDA_BUILD: only its Python and Triton code, which triton's interpreter runs on CPU tensors);
# einops is its only other runtime need (torch comes from the main environment). docs/install.md, "Kernel tests".
# Usage: bash launchers/install_cpu_kernels.sh [TARGET_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-.kernels}"
# the versions the kernel suite passed with (2026-12-07)
triton_version=3.9.0
mamba_version=2.3.2.post1
mkdir -p "$target"
python -m pip install -q --no-deps --upgrade --target "$target" "triton==$triton_version" "einops>=0.8"
# the sdist's setup.py imports torch (the main environment's) to decide what to build: no build isolation
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    python -m pip install -q --no-deps --no-build-isolation --no-binary mamba-ssm --upgrade --target "$target" \
    "mamba-ssm==$mamba_version"
PYTHONPATH="$PWD/$target${PYTHONPATH:+:$PYTHONPATH}" python -c \
    "import importlib.metadata as m; print('installed in $target: triton', m.version('triton'), '| mamba-ssm', m.version('mamba-ssm'), '| einops', m.version('einops'))"
