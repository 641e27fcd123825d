#!/usr/bin/env bash
# Paper parity mode (*_official, offset alignment, Table 1 grid; 20 jobs) on Slurm. Example:
#   TOR_EXP_PARTITION=gpu TOR_EXP_VENV=$HOME/venvs/tor_exp launchers/slurm_parity.sh [extra Hydra overrides...]
# Then: launchers/report.sh parity   (see launchers/README.md)
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_sweep.sh" parity "$@"
