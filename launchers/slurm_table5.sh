#!/usr/bin/env bash
# Paper Table 5 (hidden / residual design; 7 jobs) on Slurm. Example:
#   TOR_EXP_PARTITION=gpu TOR_EXP_VENV=$HOME/venvs/tor_exp launchers/slurm_table5.sh [extra Hydra overrides...]
# Then: launchers/report.sh table5_design   (see launchers/README.md)
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_sweep.sh" table5_design "$@"
