#!/usr/bin/env bash
# The production topology of deploy/ on this machine, without systemd (docs/deployment.md, "On one machine"):
# nginx (Debian's package, a private instance) on 127.0.0.1:$CLUSTERRA_PROD_PORT in front of two daphne
# processes on unix sockets, PostgreSQL, the Redis channel layer, a Celery worker and Celery beat, with the
# demo tenant, users and cluster of `make demo`. The processes run the ExecStart= lines of deploy/systemd/,
# the nginx site is rendered by deploy/nginx-site.sh: what runs here is what an operator installs.
#
#   scripts/prod-local.sh up       start whatever is not running (idempotent), wait until it answers, print the URL
#   scripts/prod-local.sh status   each process, running or not (exit status 3 unless all run)
#   scripts/prod-local.sh down     stop exactly what `up` started (its pid files), also after a crash
#
# Environment (everything else CLUSTERRA_* is passed on to the processes):
#   CLUSTERRA_PROD_PORT      nginx's port on 127.0.0.1 (default 8080)
#   CLUSTERRA_PROD_DIR       state: env file, nginx config, sockets, pid files, logs, static files (default .prod-local)
#   CLUSTERRA_PROD_WORKERS   number of daphne processes (default 2)
#   CLUSTERRA_DATA_DIR       the portal's data directory (default $CLUSTERRA_PROD_DIR/data)
#   CLUSTERRA_DATABASE_URL   PostgreSQL, created if missing (default postgres://postgres@127.0.0.1:5432/clusterra_prod)
#   CLUSTERRA_REDIS_URL      the channel layer (default redis://127.0.0.1:6379/1), also Celery's broker and the
#                            poller's locks unless CLUSTERRA_CELERY_BROKER_URL is set
#   CLUSTERRA_DEMO_PASSWORD  the demo users' password (else generated once into the data directory)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
action=${1:-}
case $action in up|down|status) ;; *) echo "usage: $0 up|down|status" >&2; exit 2 ;; esac

port=${CLUSTERRA_PROD_PORT:-8080}
workers=${CLUSTERRA_PROD_WORKERS:-2}
state=${CLUSTERRA_PROD_DIR:-$repo/.prod-local}
[[ $state = /* ]] || state=$repo/$state
data=${CLUSTERRA_DATA_DIR:-$state/data}
db_url=${CLUSTERRA_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/clusterra_prod}
redis_url=${CLUSTERRA_REDIS_URL:-redis://127.0.0.1:6379/1}
run=$state/run        # the daphne sockets (/run/clusterra in deploy/)
pids=$state/pids
logs=$state/log
py=$repo/.venv/bin/python
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || { echo "CLUSTERRA_PROD_PORT must be a port number, got '$port'" >&2; exit 2; }
[[ $workers =~ ^[1-9]$ ]] || { echo "CLUSTERRA_PROD_WORKERS must be 1-9, got '$workers'" >&2; exit 2; }
# A unix socket path holds at most 107 bytes.
[ ${#run} -le 90 ] || { echo "CLUSTERRA_PROD_DIR is too long for unix socket paths: $state" >&2; exit 2; }

names=(nginx)
for n in $(seq 1 "$workers"); do names+=("daphne-$n"); done
names+=(celery-worker celery-beat)

# --- processes: pid files hold "pid start-time", so a reused pid is never taken for ours ---------------
start_time() {  # of a live process (not a zombie nobody reaped); the fields after "(comm)" start at field 3
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '$1 != "Z" {print $20}'
}
pid_of() {  # prints the pid if the process of this pid file still runs
  local pid started
  read -r pid started 2>/dev/null <"$pids/$1.pid" || return 1
  [ -n "$pid" ] && [ "$(start_time "$pid")" = "$started" ] && echo "$pid"
}
running() { pid_of "$1" >/dev/null; }

launch() {  # name, command...: in a session of its own, signals at their defaults (as systemd starts services)
  local name=$1; shift
  "$py" -c 'import os, signal, sys
for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
    signal.signal(s, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_SETMASK, [])
os.setsid()
os.execvp(sys.argv[1], sys.argv[1:])' "$@" >>"$logs/$name.log" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 50); do [ -n "$(start_time "$pid")" ] && break; sleep 0.02; done
  echo "$pid $(start_time "$pid")" >"$pids/$name.pid"
}

unit_command() {  # unit file, instance: its ExecStart= words with deploy/'s paths mapped to this instance
  local line
  line=$(sed -n 's/^ExecStart=//p' "deploy/systemd/$1")
  line=${line//"/opt/clusterra"/"$repo"}
  line=${line//"/run/clusterra"/"$run"}
  line=${line//"/var/lib/clusterra"/"$data"}
  line=${line//"%i"/"${2:-}"}
  line=${line//"%H"/"$(hostname)"}
  read -ra cmd <<<"$line"
}

stop() {  # SIGTERM to the main process, SIGKILL after a timeout, then to whatever is left of its group
  local name=$1 timeout=$2 pid
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((timeout * 10))); do [ -z "$(start_time "$pid")" ] && break; sleep 0.1; done
    if [ -n "$(start_time "$pid")" ]; then
      echo "$name (pid $pid) did not stop within $timeout s: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true  # children left in its process group (Celery's pool)
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pids/$name.pid"
}

probe() {  # socket-or-url path: prints the HTTP status (000 when nothing answers)
  "$py" - "$@" <<'PY'
import http.client, socket, sys

target, path = sys.argv[1], sys.argv[2]


class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(target)


try:
    if target.startswith("http://"):
        conn = http.client.HTTPConnection(target[7:], timeout=5)
    else:
        conn = UnixConnection("127.0.0.1", timeout=5)
    conn.request("GET", path, headers={"Host": "127.0.0.1"})
    print(conn.getresponse().status)
except OSError:
    print("000")
PY
}

show_status() {
  local all=0 name pid
  for name in "${names[@]}"; do
    if pid=$(pid_of "$name"); then
      printf '%-14s running  pid %s\n' "$name" "$pid"
    elif [ -f "$pids/$name.pid" ]; then
      printf '%-14s dead     (pid file left: scripts/prod-local.sh up restarts it)\n' "$name"; all=3
    else
      printf '%-14s stopped\n' "$name"; all=3
    fi
  done
  return $all
}

if [ "$action" = status ]; then
  [ -d "$pids" ] || { echo "Nothing started from $state."; exit 3; }
  show_status
  exit $?
fi

if [ "$action" = down ]; then
  [ -d "$pids" ] || { echo "Nothing started from $state."; exit 0; }
  stop nginx 10  # first: no new requests
  # The rest side by side (each daphne ends its own sessions; Celery finishes its running tasks).
  for n in $(seq 1 9); do [ ! -f "$pids/daphne-$n.pid" ] || stop "daphne-$n" 30 & done
  stop celery-beat 10 &
  stop celery-worker 60 &
  wait
  rm -f "$run"/daphne-*.sock "$run"/daphne-*.sock.lock
  exit 0
fi

# --- up ------------------------------------------------------------------------------------------------
scripts/system-deps.sh prod
if [ -f .venv/.installed-requirements-test ]; then scripts/venv.sh test; else scripts/venv.sh; fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

mkdir -p "$state" "$pids" "$logs" "$state/nginx/tmp" "$state/static"
chmod 0755 "$state"
# The sockets: nginx's workers and the portal, nobody else (deploy/tmpfiles.d/clusterra.conf).
nginx_user=""
mkdir -p "$run"
if [ "$(id -u)" -eq 0 ]; then
  nginx_user=www-data
  id "$nginx_user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$nginx_user"
  chown "root:$nginx_user" "$run"
fi
chmod 0750 "$run"

if [ ! -s "$state/secret_key" ]; then
  (umask 077 && "$py" -c 'import secrets; print(secrets.token_urlsafe(50))' >"$state/secret_key")
fi

# The engines: PostgreSQL (the database is created if missing) and Redis.
if [[ $redis_url =~ ^redis://(127\.0\.0\.1|localhost)(:6379)?(/|$) ]]; then scripts/redis-up.sh; fi
if ! "$py" - "$db_url" <<'PY'
import sys

import dj_database_url
import psycopg
from psycopg import sql

url = sys.argv[1]
cfg = dj_database_url.parse(url)
if cfg["ENGINE"] != "django.db.backends.postgresql":
    sys.exit(f"CLUSTERRA_DATABASE_URL must be a PostgreSQL URL (postgres://...), got {url.split('://')[0]}://...")
params = {k: v for k, v in {"user": cfg["USER"], "password": cfg["PASSWORD"], "host": cfg["HOST"],
                            "port": cfg["PORT"]}.items() if v}
try:
    with psycopg.connect(dbname="postgres", connect_timeout=10, autocommit=True, **params) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (cfg["NAME"],)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cfg["NAME"])))
            print(f"Created the PostgreSQL database {cfg['NAME']}.")
except psycopg.OperationalError as exc:
    sys.exit(f"PostgreSQL is not reachable for CLUSTERRA_DATABASE_URL: {str(exc).strip()}")
PY
then exit 1; fi

# The environment of every process: what deploy/clusterra.env.example is in production.
env_file=$state/clusterra.env
cat >"$env_file.tmp" <<EOF
# Written by scripts/prod-local.sh (deploy/clusterra.env.example is the production template).
DJANGO_SETTINGS_MODULE=clusterra.settings
CLUSTERRA_DATA_DIR=$data
CLUSTERRA_STATIC_ROOT=$state/static
CLUSTERRA_SECRET_KEY_FILE=$state/secret_key
CLUSTERRA_ALLOWED_HOSTS=127.0.0.1,localhost
CLUSTERRA_ISSUER_URL=http://127.0.0.1:$port
CLUSTERRA_SECURE_COOKIES=0
CLUSTERRA_DATABASE_URL=$db_url
CLUSTERRA_REDIS_URL=$redis_url
CLUSTERRA_CELERY_BROKER_URL=${CLUSTERRA_CELERY_BROKER_URL:-$redis_url}
PROMETHEUS_MULTIPROC_DIR=$state/metrics
CLUSTERRA_LOG_FORMAT=json
CLUSTERRA_TRUST_REQUEST_ID=1
EOF
chmod 0600 "$env_file.tmp"
mv "$env_file.tmp" "$env_file"
unset CLUSTERRA_SECRET_KEY  # the file above holds it
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a

# Set up when no portal process of this instance runs (as systemd's clusterra-runtime.service does for the
# metrics directory; close_stale_sessions is only safe then).
fresh=1
for name in "${names[@]}"; do [ "$name" = nginx ] || ! running "$name" || fresh=0; done
if [ $fresh = 1 ]; then
  rm -rf "$state/metrics"
  mkdir -m 0700 "$state/metrics"
fi
# One Python process for the set-up commands (each start of Django costs seconds on a busy machine).
"$py" - "$fresh" <<'PY'
import sys

import django

django.setup()
from django.core.management import call_command  # noqa: E402

call_command("check", fail_level="ERROR")
call_command("migrate", interactive=False, verbosity=0)
call_command("collectstatic", interactive=False, verbosity=0)
call_command("setup_demo")
if sys.argv[1] == "1":
    call_command("close_stale_sessions")
PY

# nginx's static files and sockets must be reachable by its workers.
if [ -n "$nginx_user" ] && ! runuser -u "$nginx_user" -- test -r "$state/static/terminal/terminal.js"; then
  echo "nginx's user $nginx_user cannot read $state/static: use a CLUSTERRA_PROD_DIR whose parents it may enter." >&2
  exit 1
fi

# nginx: the site from deploy/, inside a main configuration of its own (prefix, pid, logs, temp files).
deploy/nginx-site.sh --workers "$workers" --server-name "127.0.0.1 localhost" --socket-dir "$run" \
  --static-root "$state/static" --access-log "$logs/nginx-access.log" --plain-http "127.0.0.1:$port" \
  >"$state/nginx/clusterra.conf"
{
  [ -n "$nginx_user" ] && echo "user $nginx_user;"
  cat <<EOF
# Written by scripts/prod-local.sh: a private nginx for this instance (Debian's /etc/nginx/nginx.conf plays
# this part in production, including the site from sites-enabled/).
worker_processes 1;
pid $state/nginx/nginx.pid;
error_log $logs/nginx-error.log warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    server_tokens off;
    client_body_temp_path $state/nginx/tmp/body;
    proxy_temp_path $state/nginx/tmp/proxy;
    fastcgi_temp_path $state/nginx/tmp/fastcgi;
    uwsgi_temp_path $state/nginx/tmp/uwsgi;
    scgi_temp_path $state/nginx/tmp/scgi;
    include $state/nginx/clusterra.conf;
}
EOF
} >"$state/nginx/nginx.conf"
nginx_cmd=("$nginx_bin" -p "$state/nginx" -e "$logs/nginx-error.log" -c "$state/nginx/nginx.conf")
"${nginx_cmd[@]}" -t -q || { echo "nginx rejected $state/nginx/nginx.conf" >&2; exit 1; }

# The processes, from deploy/systemd/'s command lines.
for n in $(seq 1 "$workers"); do
  running "daphne-$n" && continue
  rm -f "$run/daphne-$n.sock" "$run/daphne-$n.sock.lock"  # the unit's ExecStartPre
  unit_command clusterra-daphne@.service "$n"
  CLUSTERRA_WORKER_ID=$n launch "daphne-$n" "${cmd[@]}"
done
if ! running celery-worker; then unit_command clusterra-celery-worker.service; launch celery-worker "${cmd[@]}"; fi
if ! running celery-beat; then unit_command clusterra-celery-beat.service; launch celery-beat "${cmd[@]}"; fi
if running nginx; then
  kill -HUP "$(pid_of nginx)"  # re-read the configuration (the worker count or port may have changed)
else
  launch nginx "${nginx_cmd[@]}" -g "daemon off;"
fi

# Wait until every daphne is ready on its socket (/readyz: database, channel layer, recordings) and nginx
# serves a page of the portal.
deadline=$((SECONDS + ${CLUSTERRA_PROD_START_TIMEOUT:-90}))
for target in $(seq 1 "$workers") nginx; do
  while :; do
    if [ "$target" = nginx ]; then
      name=nginx; status=$(probe "http://127.0.0.1:$port" /accounts/login/)
    else
      name=daphne-$target; status=$(probe "$run/daphne-$target.sock" /readyz)
    fi
    [ "$status" = 200 ] && break
    if ! running "$name" || [ $SECONDS -ge $deadline ]; then
      echo "$name did not come up (last answer: $status). Its log, $logs/$name.log:" >&2
      tail -n 30 "$logs/$name.log" >&2 || true
      [ "$name" != nginx ] || tail -n 10 "$logs/nginx-error.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
done
for name in celery-worker celery-beat; do
  running "$name" || { echo "$name exited; see $logs/$name.log" >&2; tail -n 30 "$logs/$name.log" >&2; exit 1; }
done

show_status || true
echo
echo "Clusterra (nginx + $workers daphne processes + Celery) is running on http://127.0.0.1:$port/"
echo "State, logs and pid files: $state. Stop it with: scripts/prod-local.sh down"
