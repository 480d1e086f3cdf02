#!/usr/bin/env bash
# A single-node SLURM on this machine for the `slurm` tests (tests/cluster/test_slurm.py):
# munged, slurmctld and slurmd started directly as root (no systemd), one node (this host,
# 2 CPUs), one partition `debug`, no accounting. Idempotent: when `sinfo` already answers
# with the node up, it says so and exits 0. Needs root (apt-get, /etc/slurm, /etc/munge).
#
#   tests/slurm/start.sh            # install if missing, configure, start, wait for the node
#   tests/slurm/stop.sh             # stop the three daemons
#
# Logs: /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd.log.
set -euo pipefail

NODE=$(hostname -s)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/slurm
CPUS=${SLURM_TEST_CPUS:-2}
WAIT_S=${SLURM_TEST_WAIT_S:-60}

node_up() {  # the node answers and is idle, mixed or allocated (not down, drained, unknown)
    local state
    state=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n1) || return 1
    [[ $state =~ ^(idle|mix|mixed|alloc|allocated|comp|completing)$ ]]
}

if command -v sinfo >/dev/null && node_up; then
    echo "slurm: already running, node $NODE $(sinfo -h -N -n "$NODE" -o '%t')"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "slurm: start.sh must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm: installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# -- munge --------------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "slurm: starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi
munge -n | unmunge >/dev/null || { echo "slurm: munged does not answer" >&2; exit 1; }

# -- slurm.conf ----------------------------------------------------------------------------------
TOTAL_MB=$(free -m | awk '/^Mem:/ {print $2}')
REAL_MB=$(( TOTAL_MB * 95 / 100 ))  # a bit below what the kernel reports, or slurmd drains the node
install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$SPOOL/ctld" "$SPOOL/d"
cat > "$CONF.new" <<CONF
# written by emfuse tests/slurm/start.sh: a single-node SLURM for tests
ClusterName=emfuse-test
SlurmctldHost=$NODE
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=$NODE CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.new" "$CONF"
# no cgroups here: slurmd reads cgroup.conf only if it exists; keep it absent

# -- the daemons ---------------------------------------------------------------------------------
start=$(date +%s.%N)
if ! pgrep -x slurmctld >/dev/null; then
    echo "slurm: starting slurmctld"
    slurmctld -f "$CONF" -i   # -i: ignore state files that do not match (a fresh start)
fi
for _ in $(seq 20); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
if ! pgrep -x slurmd >/dev/null; then
    echo "slurm: starting slurmd"
    slurmd -f "$CONF"
fi

for _ in $(seq $(( WAIT_S * 2 ))); do
    if node_up; then
        printf 'slurm: node %s %s after %.1f s\n' "$NODE" "$(sinfo -h -N -n "$NODE" -o '%t')" \
            "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')"
        exit 0
    fi
    state=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null || true)
    if [[ $state == down* || $state == drain* ]]; then  # e.g. after a restart: bring it back
        scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
    fi
    sleep 0.5
done
echo "slurm: node $NODE not up after ${WAIT_S} s:" >&2
sinfo -N -l >&2 || true
tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
exit 1
