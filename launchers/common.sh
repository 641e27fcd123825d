# Sourced by the tor_exp launchers (not run directly): working dir, virtualenv, W&B and Hugging Face settings.
#
#   TOR_EXP_WORKDIR   where multirun/<experiment>/ is written (default: the repository root). Keep it fixed:
#                     re-running a sweep from the same dir resumes it (finished jobs are skipped).
#   TOR_EXP_VENV      virtualenv to activate (optional); Slurm jobs inherit it (submitit reuses this python).
#   TOR_EXP_WANDB     off (default: results.json only) | offline (sync later: wandb sync <run dir>/wandb/offline-run-*)
#                     | online (needs `wandb login`); WANDB_PROJECT / WANDB_ENTITY pick the project.
#   TOR_EXP_HF_OFFLINE=1  jobs never touch the Hub (download the weights on the login node first).
#   TOR_EXP_DRY_RUN=1 print the command instead of running it.
set -euo pipefail

: "${TOR_EXP_WORKDIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
if [[ -n "${TOR_EXP_VENV:-}" ]]; then
    # shellcheck disable=SC1091
    source "$TOR_EXP_VENV/bin/activate"
fi
export TOKENIZERS_PARALLELISM=false
if [[ "${TOR_EXP_HF_OFFLINE:-0}" == 1 ]]; then
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
fi

logger_args=()
case "${TOR_EXP_WANDB:-off}" in
    off) ;;
    online | offline)
        logger_args=(logger=wandb "logger.mode=${TOR_EXP_WANDB}")
        if [[ -n "${WANDB_PROJECT:-}" ]]; then logger_args+=("logger.project=${WANDB_PROJECT}"); fi
        if [[ -n "${WANDB_ENTITY:-}" ]]; then logger_args+=("logger.entity=${WANDB_ENTITY}"); fi
        ;;
    *)
        echo "error: TOR_EXP_WANDB=${TOR_EXP_WANDB}: must be off, offline or online" >&2
        exit 2
        ;;
esac

# run_cmd CMD...: run from TOR_EXP_WORKDIR (or print it with TOR_EXP_DRY_RUN=1)
run_cmd() {
    cd "$TOR_EXP_WORKDIR"
    if [[ "${TOR_EXP_DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
        return 0
    fi
    exec "$@"
}

# check_experiment NAME: fail early (one line) on a misspelt experiment
check_experiment() {
    local conf
    conf="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/conf/experiment/$1.yaml"
    if [[ ! -f "$conf" ]]; then
        echo "error: experiment=$1: no such file $conf" >&2
        exit 2
    fi
}
