#!/usr/bin/env bash
# The test command: install, make sure PostgreSQL is up, lint, type-check, then pytest (arguments go to pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
export PROMPTBANK_TEST_POSTGRES_URL="${PROMPTBANK_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"

bash scripts/install.sh

ensure_postgres() {
  if ! command -v pg_isready >/dev/null; then
    echo "test: pg_isready not found; cannot check that PostgreSQL is up" >&2
    return 0
  fi
  if pg_isready -q -h 127.0.0.1 -p 5432; then
    return 0
  fi
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "test: PostgreSQL is not answering on 127.0.0.1:5432 and pg_ctlcluster is not here to start it" >&2
    return 1
  fi
  local dir
  for dir in /etc/postgresql/*/; do
    echo "test: starting PostgreSQL $(basename "$dir")"
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$dir")" main start || true
  done
  local _
  for _ in $(seq 60); do
    if pg_isready -q -h 127.0.0.1 -p 5432; then
      return 0
    fi
    sleep 0.5
  done
  echo "test: PostgreSQL did not come up on 127.0.0.1:5432" >&2
  return 1
}

case "$PROMPTBANK_TEST_POSTGRES_URL" in
  *@127.0.0.1:5432/* | *@localhost:5432/*) ensure_postgres ;;
  *) echo "test: using the PostgreSQL at PROMPTBANK_TEST_POSTGRES_URL as it is" ;;
esac
# The shared-limits tests need Redis (tests/redis_server.py): start one, in memory only, when none answers.
export PROMPTBANK_TEST_REDIS_URL="${PROMPTBANK_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
if [[ "$PROMPTBANK_TEST_REDIS_URL" == redis://127.0.0.1:6379/* ]] && command -v redis-server >/dev/null \
    && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "test: starting redis-server on 127.0.0.1:6379"
  redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --daemonize yes >/dev/null
fi
echo "test: ruff"
"$PYTHON" -m ruff check app workers tests bench migrations
echo "test: mypy"
"$PYTHON" -m mypy app workers
echo "test: import contracts (pyproject [tool.importlinter])"
"$PYTHON" -c "import sys; from importlinter.cli import lint_imports_command; sys.argv[0] = 'lint-imports'; lint_imports_command()" --no-cache
echo "test: pytest"
exec "$PYTHON" -m pytest "$@"
