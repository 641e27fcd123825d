#!/usr/bin/env bash
# Run one tor_exp sweep on Slurm through hydra-submitit-launcher. No sbatch script: this process (run it on the
# login node, inside tmux/screen) submits one job array and waits for it. If it dies, run the same command
# again: the sweep dir is fixed (multirun/<experiment>) and finished jobs are skipped.
#
#   usage: launchers/slurm_sweep.sh <experiment> [extra Hydra overrides...]
#   env:   TOR_EXP_PARTITION (required), TOR_EXP_ACCOUNT, TOR_EXP_QOS, TOR_EXP_TIMEOUT_MIN, TOR_EXP_PARALLEL
#          (array parallelism), TOR_EXP_GPUS (per job, default 1) + everything in launchers/common.sh
#   e.g.   TOR_EXP_PARTITION=gpu TOR_EXP_WANDB=online launchers/slurm_sweep.sh table1_mamba2
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

experiment="${1:?usage: $0 <experiment> [extra Hydra overrides...]}"
shift
check_experiment "$experiment"
if [[ -z "${TOR_EXP_PARTITION:-}" ]]; then
    echo "error: TOR_EXP_PARTITION is not set (the Slurm partition, e.g. TOR_EXP_PARTITION=gpu)" >&2
    exit 2
fi
args=(-m "experiment=$experiment" launcher=slurm "hydra.launcher.partition=$TOR_EXP_PARTITION")
if [[ -n "${TOR_EXP_ACCOUNT:-}" ]]; then args+=("hydra.launcher.account=$TOR_EXP_ACCOUNT"); fi
if [[ -n "${TOR_EXP_QOS:-}" ]]; then args+=("hydra.launcher.qos=$TOR_EXP_QOS"); fi
if [[ -n "${TOR_EXP_TIMEOUT_MIN:-}" ]]; then args+=("hydra.launcher.timeout_min=$TOR_EXP_TIMEOUT_MIN"); fi
if [[ -n "${TOR_EXP_PARALLEL:-}" ]]; then args+=("hydra.launcher.array_parallelism=$TOR_EXP_PARALLEL"); fi
if [[ -n "${TOR_EXP_GPUS:-}" ]]; then args+=("hydra.launcher.gpus_per_node=$TOR_EXP_GPUS"); fi
run_cmd python -m tor_exp "${args[@]}" ${logger_args[@]+"${logger_args[@]}"} "$@"
