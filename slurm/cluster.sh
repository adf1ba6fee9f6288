#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine: munge, MariaDB + slurmdbd (accounting, so sacct and submitit can
# see job states), slurmctld and slurmd, all on localhost; the node's CPUs and memory are the machine's.
#
#   slurm/cluster.sh up      install what is missing (Debian: slurm-wlm, slurmdbd, munge, mariadb-server, without
#                            their recommended packages: Slurm's HDF5, InfluxDB, ROCm… plugins and MariaDB's
#                            compression providers, none used here; as root), write the configuration, start the
#                            daemons; idempotent (a running cluster is left as it is)
#   slurm/cluster.sh down    cancel every job and stop the daemons
#   slurm/cluster.sh status  sinfo, or exit 1 if the controller does not answer
#
# Everything lives under /etc/slurm, /var/lib/nmtune-slurm (state, spool, database, logs) and /run/nmtune-slurm
# (pid files); the daemons run as root (a single-user test cluster, as in CI). Used by `make slurm` / `make
# slurm-stop` and by .ci/run.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # runuser and the daemons, whatever PATH the caller (CI) has

CLUSTER=nmtune
STATE=/var/lib/nmtune-slurm
RUN=/run/nmtune-slurm
CONF=/etc/slurm
DBPASS=nmtune-slurm-local  # the accounting database listens on a local socket only
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

say() { echo "slurm: $*"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "starting a Slurm cluster needs root (daemons, /etc/slurm); run as root, e.g. sudo make slurm" >&2
    exit 1
  fi
}

pidfile() { if [ "$1" = mariadbd ]; then echo /run/mysqld/nmtune.pid; else echo "$RUN/$1.pid"; fi; }
running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq "$((seconds * 4))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  say "$what did not come up within $seconds s; logs in $STATE/log" >&2
  tail -n 20 "$STATE"/log/*.log "$STATE"/mysql/error.log >&2 2>/dev/null || true
  exit 1
}

install() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

configure() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # leave 10 % to the system
  mkdir -p "$CONF" "$STATE"/{ctld,spool,log,mysql} "$RUN"
  cat > "$CONF/slurm.conf" <<EOF
# written by slurm/cluster.sh: a one-node test cluster on localhost
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$CONF/slurmdbd.conf" <<EOF
# written by slurm/cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF/slurmdbd.conf"
  rm -f "$CONF/cgroup.conf"  # no cgroups: processes tracked through /proc (proctrack/linuxproc), no task plugin
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 20 munged sh -c 'munge -n | unmunge'
  fi
}

start_database() {
  if ! mariadb -u root -e 'select 1' >/dev/null 2>&1; then
    if [ ! -d "$STATE/mysql/mysql" ]; then
      mariadb-install-db --user=mysql --datadir="$STATE/mysql" >/dev/null
    fi
    chown -R mysql:mysql "$STATE/mysql"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (setsid /usr/sbin/mariadbd --user=mysql --datadir="$STATE/mysql" --bind-address=127.0.0.1 \
       --pid-file=/run/mysqld/nmtune.pid --log-error="$STATE/mysql/error.log" >/dev/null 2>&1 &)
    wait_for 60 MariaDB mariadb -u root -e 'select 1'
  fi
  mariadb -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
                      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

up() {
  need_root
  if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    say "already up"; sinfo; return 0
  fi
  install
  configure
  start_munge
  start_database
  running slurmdbd || /usr/sbin/slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  running slurmctld || /usr/sbin/slurmctld
  wait_for 60 slurmctld sh -c 'scontrol ping | grep -q UP'
  running slurmd || /usr/sbin/slurmd -N localhost
  wait_for 60 "the node" sh -c "sinfo -h -o %T | grep -qE 'idle|mix|alloc'"
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  say "up: $(sinfo -h -o '%P %D node, %c CPUs, %m MB, %T')"
}

down() {
  need_root
  scancel --user=root >/dev/null 2>&1 || true
  for daemon in slurmd slurmctld slurmdbd mariadbd; do
    if running "$daemon"; then kill "$(cat "$(pidfile "$daemon")")"; fi
  done
  for daemon in slurmd slurmctld slurmdbd mariadbd; do
    for _ in $(seq 40); do running "$daemon" || break; sleep 0.25; done
  done
  say "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) scontrol ping | grep -q UP && sinfo ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
