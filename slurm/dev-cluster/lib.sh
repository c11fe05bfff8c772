# Shared by start.sh and stop.sh (sourced, not run).
STATE=${SLURM_DEV_DIR:-/tmp/slurm-dev}
CONF_DIR=/etc/slurm
MARKER_PREFIX="# written by slurm/dev-cluster/start.sh"

# One start.sh/stop.sh at a time on this machine: test sessions call start.sh
# when `scontrol ping` fails, and two of them starting daemons at once end up
# with two slurmctlds fighting over one StateSaveLocation. Daemons must be
# started with `9>&-`, or they inherit the lock and hold it forever.
dev_lock() {
    exec 9>/run/lock/slurm-dev.lock
    flock -w 300 9 || { echo "[slurm-dev] ERROR: another start.sh/stop.sh holds /run/lock/slurm-dev.lock" >&2; exit 1; }
}

# ours <name> <pid>: that process belongs to the dev cluster in $STATE.
ours() {
    case $1 in
        munged|mariadbd) tr '\0' ' ' < "/proc/$2/cmdline" 2>/dev/null | grep -q -- "$STATE/" ;;
        *) grep -qx "StateSaveLocation=$STATE/spool/ctld" "$CONF_DIR/slurm.conf" 2>/dev/null ;;
    esac
}

# daemon_pid <name>: print the pid of the running daemon <name> of this dev
# cluster; non-zero status if none runs. The pid file is the source, but it can
# go stale (a second copy that failed to start, e.g. on a busy port, overwrites
# it and dies); then the live process is found by its exact name, checked with
# `ours`, and the pid file repaired. Forked helpers (slurmctld's slurmscriptd)
# are skipped: their parent has the same name.
daemon_pid() {
    local name=$1 f="$STATE/run/$1.pid" pid p
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        echo "$pid"; return 0
    fi
    for p in $(pgrep -x "$name" 2>/dev/null || true); do
        [ "$(cat "/proc/$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null)/comm" 2>/dev/null)" = "$name" ] && continue
        if ours "$name" "$p"; then
            mkdir -p "$STATE/run" && echo "$p" > "$f"
            echo "$p"; return 0
        fi
    done
    return 1
}
running() { daemon_pid "$1" >/dev/null; }
