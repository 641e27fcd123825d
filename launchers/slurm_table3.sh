#!/usr/bin/env bash
# Paper Table 3 (importance metric; 8 jobs) on Slurm. Example:
#   TOR_EXP_PARTITION=gpu TOR_EXP_VENV=$HOME/venvs/tor_exp launchers/slurm_table3.sh [extra Hydra overrides...]
# Then: launchers/report.sh table3_metric   (see launchers/README.md)
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_sweep.sh" table3_metric "$@"
