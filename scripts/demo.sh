#!/usr/bin/env bash
# make demo: set everything up and serve the portal on http://127.0.0.1:${CLUSTERRA_PORT:-8000}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh demo
scripts/venv.sh
scripts/redis-up.sh
if [ "$(id -u)" -eq 0 ]; then
  scripts/slurm-local.sh up   # a live single-node Slurm: sinfo, sbatch, squeue work in the terminal
else
  echo "Not root: skipping the local Slurm (run scripts/slurm-local.sh up as root to add it)."
fi
export DJANGO_SETTINGS_MODULE=clusterra.settings
# Redis runs anyway (Celery's broker, database 0), so the channel layer uses it too, on a database of its
# own, as production does: what the demo shows is the multi-process path (revocation through Redis).
export CLUSTERRA_CELERY_BROKER_URL=${CLUSTERRA_CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}
export CLUSTERRA_REDIS_URL=${CLUSTERRA_REDIS_URL:-redis://127.0.0.1:6379/1}
py=.venv/bin/python
$py manage.py check --fail-level ERROR
$py manage.py migrate --noinput -v0
$py manage.py setup_demo
$py manage.py close_stale_sessions
port=${CLUSTERRA_PORT:-8000}

# The job poller: a Celery worker with beat, stopped with the portal.
mkdir -p data
.venv/bin/celery -A clusterra worker --beat --pool=solo --loglevel=WARNING --schedule=data/celerybeat-schedule \
  >data/celery.log 2>&1 &
celery_pid=$!
trap 'kill $celery_pid 2>/dev/null; wait $celery_pid 2>/dev/null' EXIT INT TERM

echo
echo "Clusterra is running on http://127.0.0.1:$port/ (Ctrl-C stops it). Job poller log: data/celery.log"
# Sessions end by their own idle/max-duration rules, so daphne's 24 h WebSocket cap is turned off.
.venv/bin/daphne -b 127.0.0.1 -p "$port" --websocket_timeout -1 clusterra.asgi:application
