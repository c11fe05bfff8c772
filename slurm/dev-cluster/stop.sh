#!/usr/bin/env bash
# Stop the dev cluster started by start.sh (by its pid files); the state dir
# stays, so the next start.sh keeps the accounting DB and job ids.
#
#   slurm/dev-cluster/stop.sh           # stop the daemons
#   slurm/dev-cluster/stop.sh --purge   # also delete ${SLURM_DEV_DIR:-/tmp/slurm-dev}
#                                       # and the /etc/slurm configs start.sh wrote
set -euo pipefail
STATE=${SLURM_DEV_DIR:-/tmp/slurm-dev}
purge=false
case "${1:-}" in
    --purge) purge=true ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

# pid of the daemon from its pid file, if that process is alive and is the daemon
pid_of() {
    local f="$STATE/run/$1.pid" pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f" 2>/dev/null) && [ -n "$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}

# slurmd first (it ends running job steps), MariaDB after slurmdbd, munge last
for d in slurmd slurmctld slurmdbd mariadbd munged; do
    pid=$(pid_of "$d") || { rm -f "$STATE/run/$d.pid"; continue; }
    kill "$pid"
    for _ in $(seq 150); do   # up to 30 s (MariaDB flushes InnoDB)
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "[slurm-dev] $d (pid $pid) did not stop in 30s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/run/$d.pid"
    echo "[slurm-dev] stopped $d"
done

if $purge; then
    rm -rf "$STATE"
    for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
        if [ -f "$f" ] && grep -q "^# written by slurm/dev-cluster/start.sh" "$f"; then rm -f "$f"; fi
    done
    echo "[slurm-dev] removed $STATE and the generated /etc/slurm configs"
fi
