#!/usr/bin/env bash
# Bring up a single-node SLURM on localhost for tests and for trying things out:
# munge, MariaDB + slurmdbd (accounting: submitit needs sacct), slurmctld, slurmd.
# Works as root in a container without systemd or cgroups. Idempotent.
#
#   slurm/dev-cluster/start.sh            # state under ${SLURM_DEV_DIR:-/tmp/slurm-dev}
#   slurm/dev-cluster/stop.sh [--purge]
#
# A requeued job waits ~2 minutes (its BeginTime) before it starts again; a
# test can release it at once with `scontrol update JobId=<id> StartTime=now`.
set -euo pipefail

STATE=${SLURM_DEV_DIR:-/tmp/slurm-dev}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
DB_PASS=slurmdev
CONF_DIR=/etc/slurm
mkdir -p "$STATE"/{log,spool/ctld,spool/d,run,mysql-run} "$CONF_DIR"

say() { echo "[slurm-dev] $*"; }
fail() { echo "[slurm-dev] ERROR: $1" >&2; [ -n "${2:-}" ] && [ -f "$2" ] && tail -n 30 "$2" >&2; exit 1; }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for <seconds> <description> <log> <command...>
    local t=$1 what=$2 log=$3; shift 3
    for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "$what did not come up within ${t}s" "$log"
}

# --- munge -------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
if ! running "$STATE/run/munged.pid"; then
    munged --force --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
        --socket=/run/munge/munge.socket.2
fi
wait_for 10 munge "$STATE/log/munged.log" bash -c 'munge -n | unmunge'

# --- MariaDB + slurmdbd --------------------------------------------------------
if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
        >"$STATE/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed" "$STATE/log/mariadb-install.log"
fi
SOCK="$STATE/mysql-run/mysqld.sock"
if ! running "$STATE/run/mariadbd.pid"; then
    mariadbd --user=root --datadir="$STATE/mysql" --socket="$SOCK" --pid-file="$STATE/run/mariadbd.pid" \
        --port=3306 --bind-address=127.0.0.1 --log-error="$STATE/log/mariadb.log" \
        --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
fi
wait_for 60 MariaDB "$STATE/log/mariadb.log" mariadb --socket="$SOCK" -e "select 1"
mariadb --socket="$SOCK" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

cat > "$CONF_DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
chmod 600 "$CONF_DIR/slurmdbd.conf"

cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=dev
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=300
KillWait=30
OverTimeLimit=0
InactiveLimit=0
ReturnToService=2
JobRequeue=1
SlurmdTimeout=60
MpiDefault=none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

if ! running "$STATE/run/slurmdbd.pid"; then
    slurmdbd
fi
wait_for 120 slurmdbd "$STATE/log/slurmdbd.log" bash -c "echo > /dev/tcp/127.0.0.1/6819"
sacctmgr -i add cluster dev >/dev/null 2>&1 || true
sacctmgr -i add account dev Cluster=dev Description=dev Organization=dev >/dev/null 2>&1 || true
sacctmgr -i add user root Account=dev Cluster=dev >/dev/null 2>&1 || true

if ! running "$STATE/run/slurmctld.pid"; then
    slurmctld
fi
wait_for 30 slurmctld "$STATE/log/slurmctld.log" scontrol ping
if ! running "$STATE/run/slurmd.pid"; then
    slurmd
fi
wait_for 60 "slurmd (node idle)" "$STATE/log/slurmd.log" bash -c "sinfo -h -N -o %t | grep -Eq '^(idle|mix|alloc)'"
scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true

# --- smoke test: a job runs and accounting sees it ------------------------------
JOB=$(sbatch --parsable --output=/dev/null --wrap 'hostname')
for _ in $(seq 300); do
    state=$(sacct -n -X -j "$JOB" -o State%20 2>/dev/null | tr -d ' ' | head -n1)
    [ "$state" = COMPLETED ] && break
    sleep 0.2
done
[ "${state:-}" = COMPLETED ] || fail "smoke job $JOB did not complete (sacct state: ${state:-none})" "$STATE/log/slurmctld.log"
say "slurm dev cluster ready (node $HOST, $CPUS CPUs, state in $STATE)"
