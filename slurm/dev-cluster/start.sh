#!/usr/bin/env bash
# Bring up a single-node SLURM on localhost for tests and for trying things out:
# munge, MariaDB + slurmdbd (accounting: submitit polls sacct), slurmctld, slurmd.
# Runs as root in a container without systemd or cgroups. Idempotent: when the
# daemons already run it only checks them (and reconfigures if slurm.conf changed).
#
#   slurm/dev-cluster/start.sh            # ~7 s fresh, ~4 s restart, ~1-2 s when already up
#   slurm/dev-cluster/stop.sh [--purge]   # --purge also deletes the state dir
#
# It ends with a smoke job (sbatch --wrap hostname) that sacct must show
# COMPLETED, then prints "slurm dev cluster ready". A daemon that does not come
# up fails the script with the tail of its log (all logs: $STATE/log/).
#
# Everything (spool, logs, pid files, MariaDB datadir) lives under
# ${SLURM_DEV_DIR:-/tmp/slurm-dev}; slurm.conf and slurmdbd.conf are written to
# /etc/slurm, where the Debian client commands look, so sbatch/squeue/sacct work
# without any environment (one dev cluster per machine).
#
# Requeued jobs: SLURM holds a requeued job PENDING (Reason=BeginTime) for the
# credential lifetime, 120 s by default, before it may start again. Tests can
# release it earlier with
#     scontrol update JobId=<id> StartTime=now
# (not within the first second or two after the requeue: slurmd still holds the
# revoked credential and the relaunch fails), or start the cluster with
# SLURM_DEV_CRED_EXPIRE=10 to shorten the wait itself (takes a stop.sh first if
# the cluster runs: `scontrol reconfigure` does not apply it).
#
# Knobs (env): SLURM_DEV_DIR, SLURM_DEV_CRED_EXPIRE (120), SLURM_DEV_DB_PORT (3306).
# Ports: slurmctld 6817, slurmd 6818, slurmdbd 6819, MariaDB $SLURM_DEV_DB_PORT,
# all on 127.0.0.1.
set -euo pipefail

. "$(dirname "$0")/lib.sh"   # STATE, CONF_DIR, dev_lock, daemon_pid, running
CRED_EXPIRE=${SLURM_DEV_CRED_EXPIRE:-120}
DB_PORT=${SLURM_DEV_DB_PORT:-3306}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_TOTAL=$(free -m | awk '/^Mem:/ {print $2}')
MEM_MB=$(( MEM_TOTAL - MEM_TOTAL / 20 ))   # a bit under what slurmd sees, or it drains the node
DB_PASS=slurmdev
MARKER="$MARKER_PREFIX (state in $STATE)"
T0=$SECONDS

say() { echo "[slurm-dev] $*"; }
fail() {  # fail <message> [log file]
    echo "[slurm-dev] ERROR: $1" >&2
    if [ -n "${2:-}" ] && [ -f "$2" ]; then
        echo "[slurm-dev] --- last lines of $2 ---" >&2
        tail -n 30 "$2" >&2
    fi
    exit 1
}
# wait_for <seconds> <daemon> <log> <command...>: until the command succeeds;
# fails at once (with the log's tail) when the daemon is no longer running.
wait_for() {
    local t=$1 name=$2 log=$3 i; shift 3
    for i in $(seq $((t * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        if [ "$i" -gt 15 ] && ! running "$name"; then
            fail "$name exited during startup" "$log"
        fi
        sleep 0.2
    done
    fail "$name did not come up within ${t}s" "$log"
}
# install_conf <path> <content>: write only when it changed; returns 0 if it did.
install_conf() {
    local path=$1 content=$2
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then return 1; fi
    if [ -f "$path" ] && ! grep -q "^$MARKER_PREFIX" "$path" \
        && [ ! -f "$path.before-dev-cluster" ]; then
        cp -p "$path" "$path.before-dev-cluster"
        say "kept the previous $path as $path.before-dev-cluster"
    fi
    printf '%s\n' "$content" > "$path"
    return 0
}

for cmd in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr sbatch; do
    command -v "$cmd" >/dev/null || fail "$cmd not found (apt-get install slurm-wlm slurmdbd munge mariadb-server slurm-client)"
done
[ "$(id -u)" = 0 ] || fail "run as root (the daemons run as root here)"
dev_lock
other=$(sed -n 's|^StateSaveLocation=\(.*\)/spool/ctld$|\1|p' "$CONF_DIR/slurm.conf" 2>/dev/null || true)
if [ -n "$other" ] && [ "$other" != "$STATE" ] && scontrol ping >/dev/null 2>&1; then
    fail "another dev cluster (state in $other) is running; stop it first: SLURM_DEV_DIR=$other $(dirname "$0")/stop.sh"
fi
getent hosts "$HOST" >/dev/null || say "note: $HOST does not resolve; the node is addressed as 127.0.0.1"
mkdir -p "$STATE"/{log,run,mysql-run,spool/ctld,spool/d} "$CONF_DIR" /run/munge /var/lib/munge /var/log/munge

# --- munge -------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    say "created /etc/munge/munge.key"
fi
chmod 400 /etc/munge/munge.key
if ! running munged; then
    # --force: run as root and replace a stale socket left by a killed munged
    munged --force --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
        --socket=/run/munge/munge.socket.2 9>&- || fail "munged failed to start" "$STATE/log/munged.log"
fi
wait_for 10 munged "$STATE/log/munged.log" bash -c 'munge -n | unmunge'

# --- MariaDB -------------------------------------------------------------------
SOCK="$STATE/mysql-run/mysqld.sock"
if [ ! -d "$STATE/mysql/mysql" ]; then
    say "initialising MariaDB in $STATE/mysql"
    mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
        --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 \
        || fail "mariadb-install-db failed" "$STATE/log/mariadb-install.log"
fi
if ! running mariadbd; then
    nohup mariadbd --user=root --datadir="$STATE/mysql" --socket="$SOCK" --pid-file="$STATE/run/mariadbd.pid" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --log-error="$STATE/log/mariadb.log" \
        --innodb-buffer-pool-size=64M --skip-name-resolve </dev/null >/dev/null 2>&1 9>&- &
    db_pid=$!
    for _ in $(seq 300); do
        mariadb --socket="$SOCK" -e "select 1" >/dev/null 2>&1 && break
        kill -0 "$db_pid" 2>/dev/null || fail "mariadbd exited during startup (port $DB_PORT in use? set SLURM_DEV_DB_PORT)" "$STATE/log/mariadb.log"
        sleep 0.2
    done
fi
wait_for 60 mariadbd "$STATE/log/mariadb.log" mariadb --socket="$SOCK" -e "select 1"
mariadb --socket="$SOCK" <<SQL || fail "could not create the slurm database/user" "$STATE/log/mariadb.log"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# --- configs -------------------------------------------------------------------
dbd_conf="$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db"
install_conf "$CONF_DIR/slurmdbd.conf" "$dbd_conf" || true
chmod 600 "$CONF_DIR/slurmdbd.conf"   # slurmdbd refuses a world-readable config

slurm_conf="$MARKER
ClusterName=dev
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no systemd, no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
# scheduling: start jobs within a couple of seconds
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# jobs: finished jobs leave squeue/scontrol after 30 s (sacct keeps them)
MinJobAge=30
KillWait=30
OverTimeLimit=0
InactiveLimit=0
JobRequeue=1
# node: comes back by itself after a restart
ReturnToService=2
SlurmdTimeout=60
NodeName=$HOST NodeHostname=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
conf_changed=false
install_conf "$CONF_DIR/slurm.conf" "$slurm_conf" && conf_changed=true

# --- slurmdbd + accounting -------------------------------------------------------
if ! running slurmdbd; then
    slurmdbd 9>&- || fail "slurmdbd failed to start" "$STATE/log/slurmdbd.log"
fi
wait_for 60 slurmdbd "$STATE/log/slurmdbd.log" bash -c 'echo > /dev/tcp/127.0.0.1/6819'
wait_for 30 slurmdbd "$STATE/log/slurmdbd.log" sacctmgr -n show cluster
# before slurmctld starts, so that it registers with an existing cluster
if ! sacctmgr -n -P show assoc cluster=dev user=root account=dev format=user | grep -q root; then
    sacctmgr -i add cluster dev >/dev/null 2>&1 || true
    sacctmgr -i add account dev Cluster=dev Description=dev Organization=dev >/dev/null 2>&1 || true
    sacctmgr -i add user root Account=dev DefaultAccount=dev Cluster=dev >/dev/null 2>&1 || true
    sacctmgr -n -P show assoc cluster=dev user=root account=dev format=user | grep -q root \
        || fail "could not add cluster/account/user to accounting" "$STATE/log/slurmdbd.log"
fi

# --- slurmctld + slurmd ---------------------------------------------------------
CTLD_LOG=$STATE/log/slurmctld.log
start_ctld() {  # start_ctld [-i]
    slurmctld "$@" 9>&- || fail "slurmctld failed to start" "$CTLD_LOG"
    for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
}
# check_ctld: fail if slurmctld died, except for one known case: a saved job
# whose batch script is gone from StateSaveLocation (e.g. two slurmctlds ran on
# one state dir) makes it exit with "Start with '-i'" when it schedules that
# job; then restart it with -i, which drops such jobs. Returns 1 if restarted.
check_ctld() {
    running slurmctld && return 0
    if tail -n 5 "$CTLD_LOG" | grep -q "Start with '-i'" && [ -z "${healed:-}" ]; then
        healed=1
        say "slurmctld exited over a damaged saved job; restarting it with -i (drops such jobs)"
        tail -n 2 "$CTLD_LOG" | sed 's/^/[slurm-dev]   /'
        start_ctld -i
        return 1
    fi
    fail "slurmctld exited" "$CTLD_LOG"
}
if running slurmctld; then
    if $conf_changed; then say "slurm.conf changed: scontrol reconfigure"; scontrol reconfigure || true; fi
else
    start_ctld
fi
wait_for 30 slurmctld "$STATE/log/slurmctld.log" scontrol ping
if ! running slurmd; then
    slurmd 9>&- || fail "slurmd failed to start" "$STATE/log/slurmd.log"
fi
state=""
for _ in $(seq 300); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    running slurmd || fail "slurmd exited during startup" "$STATE/log/slurmd.log"
    check_ctld || true
    sleep 0.2
done
case "$state" in idle|mixed|allocated|completing) ;;
    *) fail "node $HOST is '${state:-unknown}', not idle, after 60s ($(scontrol show node "$HOST" | grep -o 'Reason=.*'))" \
            "$STATE/log/slurmd.log" ;;
esac

# --- smoke test: a job runs and accounting records it ------------------------------
submit_smoke() {
    job=$(sbatch --parsable --job-name=dev-cluster-smoke --time=1 --output=/dev/null --wrap hostname) \
        || fail "sbatch failed" "$CTLD_LOG"
    job=${job%%;*}
}
submit_smoke
acct=""
for _ in $(seq 300); do
    acct=$(sacct -n -X -P -j "$job" -o State 2>/dev/null | head -n1)
    [ "$acct" = COMPLETED ] && break
    check_ctld || submit_smoke
    sleep 0.2
done
[ "$acct" = COMPLETED ] || fail "smoke job $job did not complete within 60s (sacct: '${acct:-nothing}'; $(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[^ ]* Reason=[^ ]*'))" \
    "$STATE/log/slurmctld.log"

# jobs that a dead slurmctld never closed in the accounting DB ("runaway jobs")
sacctmgr -i show runawayjobs >/dev/null 2>&1 || true

say "node $HOST: $CPUS CPUs, ${MEM_MB} MB, partition debug; state and logs in $STATE"
say "config: $CONF_DIR/slurm.conf (client commands find it; elsewhere: export SLURM_CONF=$CONF_DIR/slurm.conf)"
say "requeued jobs wait ${CRED_EXPIRE}s (BeginTime); release one early: scontrol update JobId=<id> StartTime=now"
say "slurm dev cluster ready ($((SECONDS - T0))s)"
