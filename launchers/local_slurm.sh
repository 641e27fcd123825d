#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from the OS packages (Debian/Ubuntu: slurmctld, slurmd,
# slurm-client, munge): to try `launcher=slurm` without a cluster, and for the Slurm tests (.ci/run starts it
# before pytest). Runs as root (it starts daemons and writes /etc/slurm/slurm.conf).
#
#   usage: sudo launchers/local_slurm.sh start     install the packages if missing, write the config, start
#                                                  munged, slurmctld and slurmd, wait until the node is idle
#          sudo launchers/local_slurm.sh stop      stop the daemons this script started
#               launchers/local_slurm.sh status    sinfo; exit 0 when the node accepts jobs
#
# The cluster (ClusterName=tor_exp_local, written to /etc/slurm/slurm.conf with a marker line; a slurm.conf
# without the marker is never touched): one node with this machine's CPUs and memory (`slurmd -C`), no GPUs, and
#   partition `debug` (default)  - every account but `blocked`, so a job with account=blocked is refused like an
#                                  unknown account on a real cluster (this cluster has no accounting database);
#   proctrack/linuxproc, task/none, select/cons_tres (CR_Core_Memory): jobs share the node by cores and memory;
#   a requeued job may restart after 10 s (AuthInfo cred_expire; Slurm's default is 120 s), finished jobs stay
#   visible to `squeue -t all` / `scontrol show job` for an hour (MinJobAge), and every job end is appended to
#   /var/log/slurm/jobcomp.log. There is no slurmdbd, so `sacct` does not work: submitit asks it whether a job
#   ended, so put launchers/local_slurm_bin (a sacct answering submitit's query from squeue) first on PATH; the
#   Slurm tests do.
# Logs: /var/log/slurm/{slurmctld,slurmd}.log. Start-up takes about 15 s (plus the package install once).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# written by tor_exp launchers/local_slurm.sh"
CLUSTER=tor_exp_local
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
PACKAGES=(slurmctld slurmd slurm-client munge)
WAIT_S=60  # seconds for the node to report idle

die() {
    echo "error: $*" >&2
    exit 2
}

need_root() {
    [[ $(id -u) == 0 ]] || die "local_slurm.sh $1 must run as root (sudo launchers/local_slurm.sh $1)"
}

running() {  # running PIDFILE: the daemon whose pid is in PIDFILE is alive
    [[ -s "$1" ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

install_packages() {
    local missing=()
    for bin in slurmctld slurmd sbatch munged; do
        command -v "$bin" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null || missing+=("$bin")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    command -v apt-get >/dev/null || die "${missing[*]} not installed and no apt-get: install ${PACKAGES[*]}"
    echo "[local_slurm] installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

start_munge() {
    if running "$MUNGE_PID"; then return 0; fi
    mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 700 /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then  # the package's post-install usually made one
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
    munge -n | unmunge >/dev/null || die "munged started but a credential does not round-trip (see /var/log/munge/)"
}

write_conf() {
    if [[ -f "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script: this machine already has a Slurm configuration"
    fi
    mkdir -p /etc/slurm "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd
    local node
    node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
    [[ $node == NodeName=* ]] || die "slurmd -C did not describe this machine: $node"
    cat >"$CONF" <<EOF
$MARKER (single-node test cluster; stop it with: launchers/local_slurm.sh stop)
ClusterName=$CLUSTER
# everything on this machine, over loopback (the host name need not resolve)
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
MinJobAge=3600
KillWait=2
# new jobs and requeued ones (eligible cred_expire s later) are scheduled within 2 s (defaults: 60 s, 30 s)
SchedulerParameters=sched_interval=2,bf_interval=2
# jobs without --mem get 1 GB per CPU, not the whole node
DefMemPerCPU=1024
InactiveLimit=0
$node NodeAddr=127.0.0.1 State=UNKNOWN
JobSubmitPlugins=lua
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # No slurmdbd here, so Slurm knows no accounts or QOS: this submit filter refuses unknown ones with the
    # errors a real cluster's accounting database gives.
    cat >/etc/slurm/job_submit.lua <<LUA
-- ${MARKER#\# }
local accounts = { root = true, tor_exp = true }
local qos = { normal = true }
function slurm_job_submit(job_desc, part_list, submit_uid)
    if job_desc.account ~= nil and not accounts[job_desc.account] then
        slurm.log_user("invalid account: " .. job_desc.account)
        return slurm.ESLURM_INVALID_ACCOUNT
    end
    if job_desc.qos ~= nil and not qos[job_desc.qos] then
        slurm.log_user("invalid qos: " .. job_desc.qos)
        return 2066  -- ESLURM_INVALID_QOS (not among the lua plugin's named constants)
    end
    return slurm.SUCCESS
end
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end
LUA
}

node_state() {
    sinfo --noheader --Node --format=%T 2>/dev/null | head -n 1
}

wait_idle() {
    local state="" t0=$SECONDS
    while (( SECONDS - t0 < WAIT_S )); do
        state=$(node_state || true)
        case "$state" in
            idle | mixed | allocated) return 0 ;;
            down* | drain* | drained*) scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "the Slurm node is '${state:-not reported}' after ${WAIT_S} s (see $LOGDIR/slurmctld.log and slurmd.log)"
}

start() {
    need_root start
    install_packages
    export PATH="$PATH:/usr/sbin:/sbin"
    start_munge
    write_conf
    running "$CTLD_PID" || slurmctld
    running "$SLURMD_PID" || slurmd
    wait_idle
    echo "[local_slurm] cluster $CLUSTER up: $(sinfo --noheader --format='partition %P, %D node(s), %c CPUs, %m MB, state %T')"
}

stop() {
    need_root stop
    local f jobs
    if running "$CTLD_PID"; then  # jobs would outlive the daemons (their slurmstepd keeps running)
        jobs=$(squeue --noheader --format=%A 2>/dev/null | sort -u | tr '\n' ' ')
        [[ -n "${jobs// /}" ]] && scancel $jobs 2>/dev/null && sleep 3
    fi
    for f in "$SLURMD_PID" "$CTLD_PID" "$MUNGE_PID"; do
        if running "$f"; then
            kill "$(cat "$f")"
            for _ in $(seq 50); do running "$f" || break; sleep 0.2; done
        fi
    done
    echo "[local_slurm] stopped"
}

status() {
    command -v sinfo >/dev/null || die "Slurm is not installed (sudo launchers/local_slurm.sh start)"
    sinfo || die "no Slurm controller answers (sudo launchers/local_slurm.sh start)"
    case "$(node_state)" in
        idle | mixed | allocated) return 0 ;;
        *) return 1 ;;
    esac
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: launchers/local_slurm.sh start|stop|status" ;;
esac
