#!/usr/bin/env bash
# A single-node Slurm cluster on loopback, for integration tests: the same submitit code path as a real cluster.
#   scripts/slurm_cluster.sh install   # Debian packages (root), once per machine
#   scripts/slurm_cluster.sh up DIR    # start munge, MariaDB, slurmdbd, slurmctld, slurmd; state and PIDs under DIR
#   scripts/slurm_cluster.sh down DIR  # stop what `up` started, by the PIDs it recorded
# No systemd here and daemons do not start on install, so everything is started by hand. Accounting goes through
# slurmdbd on MariaDB: without it there is no sacct and submitit's result() hangs on cancelled or timed-out jobs.
set -euo pipefail

cmd=${1:?usage: slurm_cluster.sh install|up DIR|down DIR}
dir=${2:-/tmp/bertgen-slurm}

install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v slurmctld >/dev/null || ! command -v mariadbd >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
  fi
}

wait_for() {  # wait_for SECONDS COMMAND...
  local t=$1; shift
  for _ in $(seq 1 $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "slurm_cluster: timed out waiting for: $*" >&2; return 1
}

up() {
  mkdir -p "$dir"/{log,spool/ctld,spool/d,pids,mysql}
  local host cpus mem
  host=$(hostname -s)
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts
  cpus=$(nproc)
  mem=$(( $(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))

  # munge: one key, daemon as user munge
  mkdir -p /run/munge /etc/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown -R munge:munge /run/munge /etc/munge /var/log/munge /var/lib/munge
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  su -s /bin/sh munge -c "munged --pid-file=/run/munge/munged.pid"
  cp /run/munge/munged.pid "$dir/pids/munged"

  # MariaDB for slurmdbd, loopback only
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  chown -R mysql:mysql "$dir/mysql"
  mariadb-install-db --user=mysql --datadir="$dir/mysql" --skip-test-db >/dev/null 2>&1
  mariadbd --user=mysql --datadir="$dir/mysql" --bind-address=127.0.0.1 --port=3306 \
    --socket=/run/mysqld/mysqld.sock --pid-file="$dir/mysql/mariadbd.pid" --log-error="$dir/mysql/mariadb.log" &
  wait_for 30 mariadb --socket=/run/mysqld/mysqld.sock -e "select 1"
  cp "$dir/mysql/mariadbd.pid" "$dir/pids/mariadbd"
  mariadb --socket=/run/mysqld/mysqld.sock -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

  mkdir -p /etc/slurm
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$dir/log/slurmdbd.log
PidFile=$dir/pids/slurmdbd
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm
StoragePort=3306
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=bertgen
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/pids/slurmctld
SlurmdPidFile=$dir/pids/slurmd
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
MailProg=/bin/true
KillWait=2
MinJobAge=600
ReturnToService=2
SchedulerParameters=defer_batch=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  slurmdbd
  wait_for 30 sacctmgr -n show cluster
  sacctmgr -i add cluster bertgen >/dev/null 2>&1 || true
  slurmctld
  slurmd
  wait_for 30 sh -c "sinfo -h -o %T | grep -qE 'idle|mixed|allocated'"
  echo "slurm_cluster: up on $host ($cpus CPUs, ${mem} MB), state in $dir"
}

down() {
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    pidfile="$dir/pids/$name"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
  echo "slurm_cluster: down"
}

case "$cmd" in
  install) install ;;
  up) up ;;
  down) down ;;
  *) echo "usage: slurm_cluster.sh install|up DIR|down DIR" >&2; exit 2 ;;
esac
