#!/usr/bin/env bash
# Stop the dev cluster started by start.sh (by its pid files); the state dir
# stays, so the next start.sh keeps the accounting DB and job ids.
#
#   slurm/dev-cluster/stop.sh           # stop the daemons
#   slurm/dev-cluster/stop.sh --purge   # also delete ${SLURM_DEV_DIR:-/tmp/slurm-dev}
#                                       # and the /etc/slurm configs start.sh wrote
set -euo pipefail
. "$(dirname "$0")/lib.sh"   # STATE, CONF_DIR, dev_lock, daemon_pid
purge=false
case "${1:-}" in
    --purge) purge=true ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

dev_lock

# slurmd first (it ends running job steps), MariaDB after slurmdbd, munge last
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  for _ in 1 2 3; do   # more than one copy may run after a botched start
    pid=$(daemon_pid "$d") || { rm -f "$STATE/run/$d.pid"; break; }
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
    echo "[slurm-dev] stopped $d (pid $pid)"
  done
done

if $purge; then
    rm -rf "$STATE"
    for f in "$CONF_DIR/slurm.conf" "$CONF_DIR/slurmdbd.conf"; do
        if [ -f "$f" ] && grep -q "^$MARKER_PREFIX" "$f"; then rm -f "$f"; fi
    done
    echo "[slurm-dev] removed $STATE and the generated /etc/slurm configs"
fi
