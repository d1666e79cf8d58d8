#!/usr/bin/env bash
# A real single-machine Slurm 22.05 cluster (Debian 12) for CI and the demo. Needs root; no systemd.
#   scripts/slurm-local.sh up        install if needed, write configs, start munged, slurmdbd, slurmctld,
#                                    slurmd; wait until the node is idle and sacct works (a no-op if up)
#   scripts/slurm-local.sh stop      cancel RUNNING jobs, stop only the daemons this script started
#   scripts/slurm-local.sh status    daemons and sinfo; exit 0 if the cluster is usable
#   scripts/slurm-local.sh selftest  submit/complete/sacct/permission checks as user slurm-selftest
#   scripts/slurm-local.sh reset     stop, wipe the job state and the accounting DB, up
#   scripts/slurm-local.sh stop-ctld   stop only slurmctld (outage tests); start-ctld starts it again
#                                    (SLURM_LOCAL_LOCK_HELD=1: the caller holds /run/slurm-local/lock)
# Knobs: SLURM_LOCAL_CPUS (8), SLURM_LOCAL_MEM_MB (8192), SLURM_LOCAL_DB_PASS (test-only password).
# See docs/slurm-local.md.
set -euo pipefail

CPUS=${SLURM_LOCAL_CPUS:-8}
MEM_MB=${SLURM_LOCAL_MEM_MB:-8192}
DB_PASS=${SLURM_LOCAL_DB_PASS:-slurmdb-test-only}   # TEST-ONLY secret, see docs/slurm-local.md
LOCK_HELD=${SLURM_LOCAL_LOCK_HELD:-}   # read before every SLURM_* variable is unset below
# No SLURM_* variable of the caller (SLURM_JWT above all, SLURM_CONF, SLURM_TIME_FORMAT...) may reach
# the Slurm commands or the daemons run from here.
while read -r _v; do unset "$_v"; done < <(compgen -e | grep '^SLURM_' || true)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
umask 022

CLUSTER=clusterra
RUN=/run/slurm-local                  # pid files of what this script started, daemon start-up output
ETC=/etc/slurm
CONF=$ETC/slurm.conf
DBD_CONF=$ETC/slurmdbd.conf
LOGDIR=/var/log/slurm
STATE=/var/lib/slurm/slurmctld
SPOOL=/var/lib/slurm/slurmd
PIDDIR=/run/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
MYSQL_SOCK=/run/mysqld/mysqld.sock
SELFTEST_USER=slurm-selftest
PACKAGES=(slurm-wlm slurmctld slurmd slurm-client slurmdbd slurm-wlm-mysql-plugin munge)
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)   # daemons get nothing else

# name -> the daemon's own pid file and log
declare -A PIDFILE=([munged]=/run/munge/munged.pid [slurmdbd]=$PIDDIR/slurmdbd.pid
  [slurmctld]=$PIDDIR/slurmctld.pid [slurmd]=$PIDDIR/slurmd.pid [mariadbd]=/run/mysqld/mysqld.pid)
declare -A LOGFILE=([munged]=/var/log/munge/munged.log [slurmdbd]=$LOGDIR/slurmdbd.log
  [slurmctld]=$LOGDIR/slurmctld.log [slurmd]=$LOGDIR/slurmd.log [mariadbd]=/var/log/mysql/error.log)

T0=$(date +%s.%N)
say() { printf 'slurm-local: %s\n' "$*"; }
warn() { printf 'slurm-local: WARNING: %s\n' "$*" >&2; }
die() { printf 'slurm-local: ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }
tail_file() {  # FILE [LINES]: show the end of a log on stderr
  local f=$1 n=${2:-30}
  [ -s "$f" ] || return 0
  printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
  tail -n "$n" "$f" >&2
  printf -- '-----\n' >&2
}
die_daemon() {  # NAME MESSAGE: fail with the daemon's log tail
  local name=$1; shift
  printf 'slurm-local: ERROR: %s\n' "$*" >&2
  [ -s "$RUN/$name.out" ] && tail_file "$RUN/$name.out" 15
  tail_file "${LOGFILE[$name]}" 30
  exit 1
}
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and runs slurmd)"; }

# wait_for SECONDS CMD...: poll every 0.2 s until CMD succeeds; 1 on timeout
wait_for() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- processes
# pid_ok PID COMM: PID is a live (not zombie) process named COMM. PID 1 here reaps orphans late, so
# stopped daemons linger as zombies, on which kill -0 still succeeds.
pid_ok() {
  local pid=$1 comm=$2 c s
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  c=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$c" = "$comm" ] || return 1
  s=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [ "${s%% *}" != Z ] && [ "${s%% *}" != X ]
}
pid_gone() { ! pid_ok "$@"; }
pid_in() { local p; p=$(cat "$1" 2>/dev/null) || return 1; p=${p//[!0-9]/}; pid_ok "$p" "$2" && echo "$p"; }
our_pid() { pid_in "$RUN/$1.pid" "$1"; }        # started by this script
# any_pid NAME: running instance, ours or not (our record, then its pid file, then /proc)
any_pid() {
  local name=$1 d c
  our_pid "$name" && return 0
  pid_in "${PIDFILE[$name]}" "$name" && return 0
  for d in /proc/[0-9]*; do
    c=$(cat "$d/comm" 2>/dev/null) || continue
    if [ "$c" = "$name" ] && pid_ok "${d#/proc/}" "$name"; then echo "${d#/proc/}"; return 0; fi
  done
  return 1
}
describe() {  # NAME: one status line
  local name=$1 pid
  if pid=$(our_pid "$name"); then printf '  %-9s running  pid %-7s started by slurm-local\n' "$name" "$pid"
  elif pid=$(any_pid "$name"); then printf '  %-9s running  pid %-7s NOT started by slurm-local (stop leaves it alone)\n' "$name" "$pid"
  else printf '  %-9s stopped\n' "$name"; fi
}

# start_daemon NAME CMD...: CMD daemonizes and writes PIDFILE[NAME]; record its pid under $RUN
start_daemon() {
  local name=$1 pid; shift
  rm -f "${PIDFILE[$name]}" "$RUN/$name.pid"
  # 9>&-: the daemon must not inherit the lock (munged and slurmdbd keep inherited fds open)
  "${DAEMON_ENV[@]}" "$@" </dev/null >"$RUN/$name.out" 2>&1 9>&- \
    || die_daemon "$name" "$name failed to start: $*"
  wait_for 20 pid_in "${PIDFILE[$name]}" "$name" >/dev/null \
    || die_daemon "$name" "$name did not come up (no live pid in ${PIDFILE[$name]} after 20 s)"
  pid=$(pid_in "${PIDFILE[$name]}" "$name")
  echo "$pid" >"$RUN/$name.pid"
  say "started $name (pid $pid)"
}

# stop_ours NAME: SIGTERM the recorded pid (if it is still that daemon), wait up to 30 s, then SIGKILL
stop_ours() {
  local name=$1 pid
  if ! pid=$(our_pid "$name"); then
    rm -f "$RUN/$name.pid"
    if pid=$(any_pid "$name"); then say "$name (pid $pid) was not started by slurm-local: left running"; fi
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for 30 pid_gone "$pid" "$name"; then
    warn "$name (pid $pid) ignored SIGTERM for 30 s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for 10 pid_gone "$pid" "$name" || die_daemon "$name" "$name (pid $pid) survived SIGKILL"
  fi
  rm -f "$RUN/$name.pid"
  say "stopped $name (pid $pid)"
}

# ---------------------------------------------------------------- install
pkg_missing() {
  local p st missing=()
  for p in "$@"; do
    st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $st == ii* ]] || missing+=("$p")
  done
  echo "${missing[*]}"
}
mysql_client() { command -v mariadb || command -v mysql; }
install_packages() {
  local missing policy_created=0 aptlog=/var/log/slurm-local-apt.log
  read -ra missing <<<"$(pkg_missing "${PACKAGES[@]}")"
  # MariaDB: use the one already on the machine; install a server only if there is none at all.
  if [ ! -x /usr/sbin/mariadbd ] && [ ! -x /usr/sbin/mysqld ] && [ ! -S "$MYSQL_SOCK" ]; then
    missing+=(mariadb-server)
  elif ! mysql_client >/dev/null; then
    missing+=(mariadb-client)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (apt, --no-install-recommends; log: $aptlog)"
  # Package postinsts try to start the services through invoke-rc.d; a policy-rc.d exiting 101 stops that.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from scripts/slurm-local.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_created=1
  fi
  local rc=0
  {
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get -o DPkg::Lock::Timeout=120 update -q &&
    timeout 900 apt-get -o DPkg::Lock::Timeout=120 install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  } >"$aptlog" 2>&1 || rc=$?
  [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" -ne 0 ]; then
    tail_file "$aptlog" 25
    die "apt-get failed (exit $rc) installing ${missing[*]}"
  fi
  read -ra missing <<<"$(pkg_missing "${PACKAGES[@]}")"
  [ ${#missing[@]} -eq 0 ] || die "still not installed after apt-get: ${missing[*]}"
  say "installed packages ($(elapsed))"
}

# ---------------------------------------------------------------- configuration
validate_knobs() {
  [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_CPUS must be a positive integer (got '$CPUS')"
  [[ $MEM_MB =~ ^[1-9][0-9]*$ ]] && [ "$MEM_MB" -ge 256 ] \
    || die "SLURM_LOCAL_MEM_MB must be an integer >= 256 (got '$MEM_MB')"
  [[ $DB_PASS =~ ^[A-Za-z0-9._-]+$ ]] || die "SLURM_LOCAL_DB_PASS may only contain A-Z a-z 0-9 . _ -"
}

slurm_conf() {
  cat <<EOF
# Written by scripts/slurm-local.sh (overwritten on every 'up'). Single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$PIDDIR/slurmctld.pid
SlurmdPidFile=$PIDDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd and no cgroups here: track job processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
# Advertise CPUs/RealMemory below, not the hardware (2 cores); slurmd only logs that they differ.
SlurmdParameters=config_overrides
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=256
# Impossible requests are refused by sbatch instead of pending forever.
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MaxJobCount=60000
MaxArraySize=10001
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES DefaultTime=30:00 MaxTime=2:00:00 State=UP
PartitionName=batch Nodes=localhost DefaultTime=1:00:00 MaxTime=2-00:00:00 State=UP
EOF
}

slurmdbd_conf() {
  cat <<EOF
# Written by scripts/slurm-local.sh. StoragePass is a TEST-ONLY password (docs/slurm-local.md).
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=$PIDDIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# put_file PATH MODE OWNER CONTENT: write only if different; 0 if it changed
put_file() {
  local path=$1 mode=$2 owner=$3 content=$4
  if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
    chmod "$mode" "$path"; chown "$owner" "$path"
    return 1
  fi
  local tmp; tmp=$(mktemp "$path.XXXXXX")
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"; chown "$owner" "$tmp"
  mv -f "$tmp" "$path"
  return 0
}

CONF_CHANGED=0 DBD_CONF_CHANGED=0
write_configs() {
  id slurm >/dev/null 2>&1 || die "user 'slurm' is missing (the slurm packages create it; reinstall them)"
  id munge >/dev/null 2>&1 || die "user 'munge' is missing (the munge package creates it; reinstall it)"
  install -d -m 755 "$ETC" "$RUN"
  install -d -m 755 -o slurm -g slurm "$LOGDIR" "$PIDDIR" /var/lib/slurm "$STATE"
  install -d -m 755 "$SPOOL"
  if put_file "$CONF" 644 root:root "$(slurm_conf)"; then CONF_CHANGED=1; say "wrote $CONF"; fi
  if put_file "$DBD_CONF" 600 slurm:slurm "$(slurmdbd_conf)"; then DBD_CONF_CHANGED=1; say "wrote $DBD_CONF"; fi
  return 0
}

# ---------------------------------------------------------------- MariaDB
sql() { timeout 20 "$(mysql_client)" --protocol=socket -S "$MYSQL_SOCK" -u root --connect-timeout=5 -N -B "$@"; }
mariadb_ok() { sql -e 'select 1' >/dev/null 2>&1; }
ensure_mariadb() {
  mariadb_ok && return 0
  [ -x /usr/sbin/mariadbd ] || die "MariaDB is not reachable on $MYSQL_SOCK and /usr/sbin/mariadbd is not installed"
  # Never a second mariadbd on the same datadir: only start one if none is running at all.
  if start-stop-daemon --status --exec /usr/sbin/mariadbd; then
    say "a mariadbd is running but not answering yet; waiting for it"
  else
    install -d -m 755 -o mysql -g mysql /run/mysqld
    rm -f "$RUN/mariadbd.pid"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
      --output "$RUN/mariadbd.out" -- --user=mysql 9>&- \
      || die_daemon mariadbd "start-stop-daemon could not start /usr/sbin/mariadbd"
    local pid
    pid=$(wait_for 20 pid_in "${PIDFILE[mariadbd]}" mariadbd) \
      || die_daemon mariadbd "mariadbd did not come up (no live pid in ${PIDFILE[mariadbd]} after 20 s)"
    echo "$pid" >"$RUN/mariadbd.pid"
    say "started mariadbd (pid $pid)"
  fi
  wait_for 60 mariadb_ready || die_daemon mariadbd "MariaDB does not answer on $MYSQL_SOCK (after up to 60 s)"
}
# mariadb_ready: answers, or gives up at once (status 0, checked again by the caller) if ours died
mariadb_ready() {
  mariadb_ok && return 0
  [ -s "$RUN/mariadbd.pid" ] && ! our_pid mariadbd >/dev/null && ! start-stop-daemon --status --exec /usr/sbin/mariadbd \
    && die_daemon mariadbd "mariadbd exited during start-up"
  return 1
}
ensure_db() {
  sql <<EOF || die "could not create database $DB_NAME / user $DB_USER@localhost in MariaDB (as root via $MYSQL_SOCK)"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
EOF
}

# ---------------------------------------------------------------- daemons
munge_ok() { timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }
start_munged() {
  if munge_ok; then
    any_pid munged >/dev/null || warn "munge works but no munged process was found"
    return 0
  fi
  local key=/etc/munge/munge.key
  install -d -m 700 -o munge -g munge /etc/munge /var/lib/munge /var/log/munge
  install -d -m 755 -o munge -g munge /run/munge   # /run is a tmpfs: recreate on every start
  if [ ! -s "$key" ]; then
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    say "created $key"
  fi
  chown munge:munge "$key"; chmod 400 "$key"
  any_pid munged >/dev/null && die_daemon munged "munged is running but 'munge -n | unmunge' fails"
  start_daemon munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged
  wait_for 10 munge_ok || die_daemon munged "munged runs but 'munge -n | unmunge' fails"
}

dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
start_slurmdbd() {
  if [ "$DBD_CONF_CHANGED" = 1 ] && our_pid slurmdbd >/dev/null; then
    say "slurmdbd.conf changed: restarting slurmdbd"; stop_ours slurmdbd
  fi
  if any_pid slurmdbd >/dev/null; then
    if [ "$DBD_CONF_CHANGED" = 1 ] && ! our_pid slurmdbd >/dev/null; then
      warn "slurmdbd.conf changed but slurmdbd was not started by slurm-local; restart it yourself"
    fi
  else
    ensure_db
    start_daemon slurmdbd /usr/sbin/slurmdbd
  fi
  wait_for 60 dbd_ok || die_daemon slurmdbd "slurmdbd does not answer (sacctmgr list cluster) after 60 s"
}

ctld_ok() { local o; o=$(timeout 10 scontrol ping 2>/dev/null) && [[ $o == *"is UP"* ]]; }
start_slurmctld() {
  if [ "$CONF_CHANGED" = 1 ] && our_pid slurmctld >/dev/null; then
    say "slurm.conf changed: restarting slurmctld"; stop_ours slurmctld
  fi
  if any_pid slurmctld >/dev/null; then
    if [ "$CONF_CHANGED" = 1 ] && ! our_pid slurmctld >/dev/null; then
      warn "slurm.conf changed but slurmctld was not started by slurm-local: running 'scontrol reconfigure'"
      timeout 20 scontrol reconfigure || true
    fi
  else
    start_daemon slurmctld /usr/sbin/slurmctld
  fi
  wait_for 60 ctld_ok || die_daemon slurmctld "slurmctld does not answer 'scontrol ping' after 60 s"
}

node_state() { timeout 10 sinfo -N -h -o %T 2>/dev/null | head -n 1; }
node_ready() { local s; s=$(node_state) && [[ $s =~ ^(idle|mixed|allocated)$ ]]; }
start_slurmd() {
  if [ "$CONF_CHANGED" = 1 ] && our_pid slurmd >/dev/null; then
    say "slurm.conf changed: restarting slurmd"; stop_ours slurmd
  fi
  if ! any_pid slurmd >/dev/null; then
    start_daemon slurmd /usr/sbin/slurmd -N localhost
  fi
  # Until slurmd has registered, jobs would sit PENDING; wait for a usable node state.
  if ! wait_for 10 node_ready; then
    local s; s=$(node_state || true)
    if [[ $s =~ ^(down|drain|drained|draining|fail|failing) ]]; then
      say "node localhost is '$s': resuming it"
      timeout 10 scontrol update NodeName=localhost State=RESUME || true
    fi
    wait_for 50 node_ready || {
      timeout 10 scontrol show node localhost >&2 || true
      die_daemon slurmd "node localhost is '$(node_state || echo '?')', not idle/mixed/allocated, after 60 s"
    }
  fi
}

sacct_ok() {
  timeout 20 sacct -n -X -S now-1minutes -o JobID >/dev/null 2>&1 || return 1
  local c; c=$(timeout 10 sacctmgr -n -P list cluster format=cluster 2>/dev/null) || return 1
  [[ $'\n'$c$'\n' == *$'\n'$CLUSTER$'\n'* ]]
}

is_up() {  # cheap check that everything answers (the no-op path of 'up')
  munge_ok && any_pid slurmdbd >/dev/null && any_pid slurmctld >/dev/null && any_pid slurmd >/dev/null \
    && ctld_ok && node_ready && sacct_ok
}

lock() {
  # A caller that holds $RUN/lock itself around several commands (an outage test: no other 'up' may
  # restart slurmctld in between) says so; everyone else waits for it here.
  [ "$LOCK_HELD" = 1 ] && return 0
  install -d -m 755 "$RUN"
  exec 9>"$RUN/lock"
  flock -w 300 9 || die "another slurm-local.sh holds $RUN/lock (waited 300 s)"
}

cmd_up() {
  need_root; validate_knobs; lock
  install_packages
  write_configs
  if [ "$CONF_CHANGED$DBD_CONF_CHANGED" = 00 ] && is_up; then
    say "already up ($(elapsed))"
    return 0
  fi
  ensure_mariadb
  start_munged
  start_slurmdbd
  start_slurmctld
  start_slurmd
  wait_for 60 sacct_ok || die_daemon slurmdbd "sacct does not work (or cluster '$CLUSTER' is not registered in slurmdbd) after 60 s"
  say "up: node localhost is $(node_state), CPUs=$CPUS RealMemory=${MEM_MB}M ($(elapsed))"
}

no_active_jobs() { local o; o=$(timeout 10 squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null) && [ -z "$o" ]; }
cmd_stop() {
  need_root; lock
  local n ours=0
  for n in slurmd slurmctld slurmdbd munged mariadbd; do our_pid "$n" >/dev/null && ours=1; done
  if [ "$ours" = 1 ] && ctld_ok; then
    local running; running=$(timeout 10 squeue -h -t RUNNING -o %i 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${running// /}" ]; then
      say "cancelling RUNNING jobs: $running"
      timeout 30 scancel --state=RUNNING || warn "scancel --state=RUNNING failed"
      wait_for 45 no_active_jobs || warn "jobs still running/completing after 45 s: $(timeout 10 squeue -h -t RUNNING,COMPLETING -o %i | tr '\n' ' ')"
    fi
  fi
  for n in slurmd slurmctld slurmdbd munged mariadbd; do stop_ours "$n"; done
  say "stopped ($(elapsed))"
}

# An outage of the controller alone, for tests: slurmd, slurmdbd and running jobs carry on.
cmd_stop_ctld() {
  need_root; lock
  local pid
  if ! our_pid slurmctld >/dev/null && pid=$(any_pid slurmctld); then
    die "slurmctld (pid $pid) was not started by slurm-local; not stopping it"
  fi
  stop_ours slurmctld
}
cmd_start_ctld() {
  need_root; lock
  start_slurmctld
  wait_for 30 node_ready || die_daemon slurmctld "node localhost is '$(node_state || echo '?')' after slurmctld came back"
  say "slurmctld is back ($(elapsed))"
}

cmd_status() {
  local rc=0 n pid
  echo "daemons:"
  for n in munged slurmdbd slurmctld slurmd; do describe "$n"; done
  if mariadb_ok; then
    if pid=$(our_pid mariadbd); then echo "  mariadb   answers on $MYSQL_SOCK (pid $pid, started by slurm-local)"
    else echo "  mariadb   answers on $MYSQL_SOCK (not started by slurm-local)"; fi
  else echo "  mariadb   NOT answering on $MYSQL_SOCK"; rc=1; fi
  munge_ok || { echo "munge: 'munge -n | unmunge' fails"; rc=1; }
  if ctld_ok; then
    echo; timeout 10 sinfo || rc=1; echo
    node_ready || { echo "node localhost is '$(node_state)', not idle/mixed/allocated"; rc=1; }
    sacct_ok || { echo "sacct does not work (slurmdbd)"; rc=1; }
  else
    echo "slurmctld does not answer (scontrol ping)"; rc=1
  fi
  if [ "$rc" = 0 ]; then echo "status: usable"; else echo "status: NOT usable (run: scripts/slurm-local.sh up)"; fi
  return "$rc"
}

# ---------------------------------------------------------------- selftest
ST_HELD=
st_cleanup() { [ -n "$ST_HELD" ] && timeout 10 scancel "$ST_HELD" >/dev/null 2>&1 || true; }
st_fail() {
  printf 'slurm-local: selftest FAILED: %s\n' "$*" >&2
  tail_file "$LOGDIR/slurmctld.log" 15
  tail_file "$LOGDIR/slurmd.log" 15
  exit 1
}
st_ok() { printf '  ok  %s\n' "$*"; }
as_user() {  # run a command as the selftest user with a clean environment, in its home
  (cd "$ST_HOME" && timeout 30 runuser -u "$SELFTEST_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin \
    HOME="$ST_HOME" USER="$SELFTEST_USER" LOGNAME="$SELFTEST_USER" LANG=C.UTF-8 "$@")
}
job_state() { timeout 10 squeue -h -t all -j "$1" -o %T 2>/dev/null | head -n 1; }
job_done() { local s; s=$(job_state "$1"); [ -n "$s" ] && [[ ! $s =~ ^(PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED)$ ]]; }
sacct_line() { timeout 20 sacct -n -X -P -j "$1" -o JobID,User,Partition,State,ExitCode 2>/dev/null | head -n 1; }
sacct_has() { [ "$(sacct_line "$1")" = "$2" ]; }

cmd_selftest() {
  need_root
  trap st_cleanup EXIT
  echo "slurm-local selftest:"
  is_up || { cmd_status >&2 || true; st_fail "the cluster is not up (run: scripts/slurm-local.sh up)"; }
  st_ok "munge, slurmdbd, slurmctld and slurmd answer"

  local parts; parts=$(timeout 10 sinfo -h -o %P | sort | tr '\n' ' ')
  [ "$parts" = "batch debug* " ] || st_fail "sinfo partitions are '$parts', expected 'batch debug*'"
  # CPUs/RealMemory as written by the last 'up' (its knobs may differ from this environment's)
  local line cpus mem node
  line=$(grep '^NodeName=localhost ' "$CONF") || st_fail "no NodeName=localhost line in $CONF"
  cpus=${line#*CPUs=}; cpus=${cpus%% *}; mem=${line#*RealMemory=}; mem=${mem%% *}
  node=$(timeout 10 sinfo -N -h -o '%N %c %m' | head -n 1)
  [ "$node" = "localhost $cpus $mem" ] || st_fail "node is '$node', expected 'localhost $cpus $mem' (config_overrides)"
  st_ok "sinfo shows partitions debug* and batch, node localhost with $cpus CPUs and $mem MB"

  if ! id "$SELFTEST_USER" >/dev/null 2>&1; then
    useradd -m -s /bin/bash -c 'slurm-local selftest' "$SELFTEST_USER" || st_fail "useradd $SELFTEST_USER failed"
  fi
  ST_HOME=$(getent passwd "$SELFTEST_USER" | cut -d: -f6)
  [ -d "$ST_HOME" ] || install -d -m 755 -o "$SELFTEST_USER" -g "$(id -gn "$SELFTEST_USER")" "$ST_HOME"

  local out id
  # shellcheck disable=SC2016  # expanded by the job's shell
  out=$(as_user sbatch --parsable -J slurm-local-selftest -o "$ST_HOME/slurm-local-selftest-%j.out" \
        --wrap 'echo "hello from $(id -un) in $SLURM_JOB_PARTITION"' 2>&1) \
    || st_fail "sbatch as $SELFTEST_USER failed: $out"
  id=${out%%;*}
  [[ $id =~ ^[0-9]+$ ]] || st_fail "sbatch printed '$out', not a job id"
  wait_for 60 job_done "$id" || st_fail "job $id is still '$(job_state "$id")' after 60 s"
  [ "$(job_state "$id")" = COMPLETED ] || st_fail "job $id ended as '$(job_state "$id")', not COMPLETED"
  local f="$ST_HOME/slurm-local-selftest-$id.out"
  wait_for 10 test -s "$f" || st_fail "job $id wrote no output to $f"
  [ "$(cat "$f")" = "hello from $SELFTEST_USER in debug" ] || st_fail "job $id output is '$(cat "$f")'"
  [ "$(stat -c %U "$f")" = "$SELFTEST_USER" ] || st_fail "$f is owned by $(stat -c %U "$f"), not $SELFTEST_USER"
  rm -f "$f"
  st_ok "job $id submitted by $SELFTEST_USER (runuser) ran in debug and COMPLETED, output written to its home"

  local want="$id|$SELFTEST_USER|debug|COMPLETED|0:0"
  wait_for 30 sacct_has "$id" "$want" || st_fail "sacct shows '$(sacct_line "$id")' for job $id, expected '$want'"
  out=$(as_user sacct -n -X -P -j "$id" -o State 2>&1) || st_fail "sacct as $SELFTEST_USER failed: $out"
  [ "$out" = COMPLETED ] || st_fail "sacct as $SELFTEST_USER shows '$out' for job $id"
  st_ok "sacct shows job $id as $want (to root and to $SELFTEST_USER)"

  ST_HELD=$(timeout 10 sbatch --parsable -H -p batch -J slurm-local-selftest-held -D / -o /dev/null \
            --wrap 'sleep 600') || st_fail "sbatch -H as root failed"
  ST_HELD=${ST_HELD%%;*}
  if out=$(as_user scancel "$ST_HELD" 2>&1); then st_fail "$SELFTEST_USER could scancel root's job $ST_HELD"; fi
  [ "$(job_state "$ST_HELD")" = PENDING ] || st_fail "root's held job $ST_HELD is '$(job_state "$ST_HELD")' after $SELFTEST_USER's scancel"
  timeout 10 scancel "$ST_HELD" || st_fail "root could not scancel its job $ST_HELD"
  ST_HELD=
  st_ok "scancel of root's job by $SELFTEST_USER is refused (${out#scancel: error: })"

  if out=$(as_user sbatch --parsable -p debug -t 3:00:00 --wrap true 2>&1); then
    timeout 10 scancel "${out%%;*}" || true
    st_fail "a 3 h job was accepted in debug (MaxTime 2 h): job $out"
  fi
  st_ok "a request over the partition limit is refused at submit time (${out#sbatch: error: })"
  echo "selftest OK ($(elapsed))"
}

cmd_reset() {
  need_root
  cmd_stop
  local n pid
  for n in slurmctld slurmd slurmdbd; do
    if pid=$(any_pid "$n"); then die "$n (pid $pid) is still running and was not started by slurm-local; stop it first"; fi
  done
  say "wiping $STATE, $SPOOL and database $DB_NAME"
  find "$STATE" "$SPOOL" -mindepth 1 -delete 2>/dev/null || true
  [ -f "$LOGDIR/jobcomp.log" ] && : >"$LOGDIR/jobcomp.log"
  ensure_mariadb
  sql -e "DROP DATABASE IF EXISTS $DB_NAME" || die "could not drop database $DB_NAME"
  exec 9>&-   # release the lock for cmd_up
  cmd_up
}

case ${1:-} in
  up) cmd_up ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  selftest) cmd_selftest ;;
  reset) cmd_reset ;;
  stop-ctld) cmd_stop_ctld ;;
  start-ctld) cmd_start_ctld ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
