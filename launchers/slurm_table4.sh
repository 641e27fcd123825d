#!/usr/bin/env bash
# Paper Table 4 (reduction locations; 6 jobs) on Slurm. Example:
#   TOR_EXP_PARTITION=gpu TOR_EXP_VENV=$HOME/venvs/tor_exp launchers/slurm_table4.sh [extra Hydra overrides...]
# Then: launchers/report.sh table4_locations   (see launchers/README.md)
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_sweep.sh" table4_locations "$@"
