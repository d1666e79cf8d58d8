#!/usr/bin/env bash
# Installs the system packages Clusterra needs, from Debian's/Ubuntu's repositories.
#   scripts/system-deps.sh demo   python3-venv, Node.js/npm, util-linux (runuser, setsid)
#   scripts/system-deps.sh test   the same plus Chromium for the browser tests and nginx for the topology tests
#   scripts/system-deps.sh prod   the same as demo plus nginx (scripts/prod-local.sh)
# Needs root to install; without root it only reports what is missing.
set -euo pipefail
mode=${1:-demo}

missing=()
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v npm >/dev/null || missing+=(npm)
command -v setsid >/dev/null && command -v runuser >/dev/null || missing+=(util-linux)
command -v useradd >/dev/null || missing+=(passwd)
command -v redis-server >/dev/null || missing+=(redis-server)  # Celery broker and the poller's locks
if [ "$mode" = test ] || [ "$mode" = prod ]; then
  # Debian's nginx, run by scripts/prod-local.sh as a private instance (its system service is not used).
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
fi
if [ "$mode" = test ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v pg_isready >/dev/null || missing+=(postgresql-client)
fi

[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing system packages: ${missing[*]}. Install them (as root: apt-get install ${missing[*]}) and run again." >&2
  exit 1
fi
echo "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
