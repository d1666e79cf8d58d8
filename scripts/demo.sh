#!/usr/bin/env bash
# make demo: set everything up and serve the portal on http://127.0.0.1:${CLUSTERRA_PORT:-8000}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh demo
scripts/venv.sh
export DJANGO_SETTINGS_MODULE=clusterra.settings
py=.venv/bin/python
$py manage.py check --fail-level ERROR
$py manage.py migrate --noinput -v0
$py manage.py setup_demo
$py manage.py close_stale_sessions
port=${CLUSTERRA_PORT:-8000}
echo
echo "Clusterra is running on http://127.0.0.1:$port/ (Ctrl-C stops it)."
# Sessions end by their own idle/max-duration rules, so daphne's 24 h WebSocket cap is turned off.
exec .venv/bin/daphne -b 127.0.0.1 -p "$port" --websocket_timeout -1 clusterra.asgi:application
