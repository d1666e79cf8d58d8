#!/usr/bin/env bash
# make test: install what the suite needs and run all of it (real PTYs, PostgreSQL, Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh test
scripts/venv.sh test

# PostgreSQL: the one on 127.0.0.1:5432 unless CLUSTERRA_DATABASE_URL says otherwise.
if [ -z "${CLUSTERRA_DATABASE_URL:-}" ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 && [ "$(id -u)" -eq 0 ] && command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 20); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432; set CLUSTERRA_DATABASE_URL." >&2; exit 1; }
  export CLUSTERRA_DATABASE_URL=postgres://postgres@127.0.0.1:5432/clusterra
fi
scripts/redis-up.sh
# A live single-node Slurm (munge, slurmdbd, slurmctld, slurmd) for the jobs tests; needs root.
if [ "$(id -u)" -eq 0 ]; then
  scripts/slurm-local.sh up
else
  echo "Not root: scripts/slurm-local.sh up must have been run as root for the Slurm tests." >&2
fi
# The linter first (fast; configured in pyproject.toml): a finding fails the run like a failing test.
.venv/bin/ruff check .
export CLUSTERRA_DATA_DIR=${CLUSTERRA_TEST_DATA_DIR:-$(mktemp -d -t clusterra-test.XXXXXX)}
exec .venv/bin/pytest --create-db "$@"
