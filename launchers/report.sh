#!/usr/bin/env bash
# Build the report of a sweep: multirun/<experiment>/report/{report.md,report.json,*.png}.
#   usage: launchers/report.sh <experiment | sweep dir | W&B group> [tor_exp.report options...]
#   e.g.   launchers/report.sh table1_mamba2
#          launchers/report.sh table1_mamba2 --wandb-report --wandb-entity me --wandb-project tor_exp
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

source_arg="${1:?usage: $0 <experiment | sweep dir | W&B group> [options...]}"
shift
if [[ ! -e "$source_arg" && -d "$TOR_EXP_WORKDIR/multirun/$source_arg" ]]; then
    source_arg="multirun/$source_arg"
fi
run_cmd python -m tor_exp.report "$source_arg" "$@"
