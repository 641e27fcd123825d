#!/usr/bin/env bash
# Paper Table 2 (Mamba-1.4B / 2.8B; 20 jobs) on Slurm. Example:
#   TOR_EXP_PARTITION=gpu TOR_EXP_VENV=$HOME/venvs/tor_exp launchers/slurm_table2.sh [extra Hydra overrides...]
# Then: launchers/report.sh table2_mamba   (see launchers/README.md)
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_sweep.sh" table2_mamba "$@"
