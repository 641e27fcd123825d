#!/usr/bin/env bash
# Paper Table 1 (Mamba-2-1.3B / 2.7B; 20 jobs) on Slurm. Example:
#   TOR_EXP_PARTITION=gpu TOR_EXP_VENV=$HOME/venvs/tor_exp launchers/slurm_table1.sh [extra Hydra overrides...]
# Then: launchers/report.sh table1_mamba2   (see launchers/README.md)
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_sweep.sh" table1_mamba2 "$@"
