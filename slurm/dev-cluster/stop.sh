#!/usr/bin/env bash
# Stop the dev cluster started by start.sh; --purge also removes its state dir.
set -uo pipefail
STATE=${SLURM_DEV_DIR:-/tmp/slurm-dev}
for d in slurmd slurmctld slurmdbd mariadbd munged; do
    pidfile="$STATE/run/$d.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill "$(cat "$pidfile")"
        for _ in $(seq 50); do kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || break; sleep 0.2; done
        echo "[slurm-dev] stopped $d"
    fi
done
if [ "${1:-}" = --purge ]; then
    rm -rf "$STATE"
    echo "[slurm-dev] removed $STATE"
fi
