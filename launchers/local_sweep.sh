#!/usr/bin/env bash
# Run one tor_exp sweep on this machine: launcher=local runs the jobs as parallel processes (submitit_local);
# TOR_EXP_LOCAL=basic runs them one after another in one process (no submitit needed). Re-run to resume.
#
#   usage: launchers/local_sweep.sh <experiment> [extra Hydra overrides...]
#   e.g.   launchers/local_sweep.sh smoke
#          launchers/local_sweep.sh table1_mamba2 hydra.launcher.gpus_per_node=1 eval.batch_size=32
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

experiment="${1:?usage: $0 <experiment> [extra Hydra overrides...]}"
shift
check_experiment "$experiment"
args=(-m "experiment=$experiment")
if [[ "${TOR_EXP_LOCAL:-submitit}" != basic ]]; then args+=(launcher=local); fi
run_cmd python -m tor_exp "${args[@]}" ${logger_args[@]+"${logger_args[@]}"} "$@"
