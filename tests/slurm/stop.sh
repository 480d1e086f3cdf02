#!/usr/bin/env bash
# Stop the single-node SLURM of tests/slurm/start.sh: its jobs, slurmd, slurmctld, munged.
set -uo pipefail

if command -v squeue >/dev/null && scontrol ping >/dev/null 2>&1; then
    scancel --full --partition=debug 2>/dev/null || true
fi
stop() {  # stop a daemon from its pid file, waiting for it to go
    local name=$1 pidfile=$2 pid
    pid=$(cat "$pidfile" 2>/dev/null || pgrep -x -o "$name" || true)
    [[ -n $pid ]] || { echo "slurm: $name not running"; return 0; }
    echo "slurm: stopping $name ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
}
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop munged /run/munge/munged.pid
