#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements (runtime, or runtime + test with "test").
set -euo pipefail
cd "$(dirname "$0")/.."
req=requirements.txt
[ "${1:-}" = test ] && req=requirements-test.txt
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed ($python is older)." >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.installed-$(basename "$req" .txt)
if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/pip install --disable-pip-version-check -q -r "$req" -c constraints.txt
  touch "$stamp"
fi
# The project itself, editable, for the `clusterra` command (.venv/bin/clusterra).
[ -x .venv/bin/clusterra ] || .venv/bin/pip install --disable-pip-version-check -q --no-deps -e .
# Front-end packages (xterm.js), pinned by package-lock.json.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# The tests' local OpenID Provider (tests/idp: panva's oidc-provider), pinned by its own package-lock.json.
if [ "$req" = requirements-test.txt ] && { [ ! -f tests/idp/node_modules/.package-lock.json ] || [ tests/idp/package-lock.json -nt tests/idp/node_modules/.package-lock.json ]; }; then
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
fi
