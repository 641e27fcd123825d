#!/usr/bin/env bash
# Paper Table 6 (LTMP vs UTRC; 7 jobs) on Slurm. Example:
#   TOR_EXP_PARTITION=gpu TOR_EXP_VENV=$HOME/venvs/tor_exp launchers/slurm_table6.sh [extra Hydra overrides...]
# Then: launchers/report.sh table6_ltmp   (see launchers/README.md)
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_sweep.sh" table6_ltmp "$@"
