#!/usr/bin/env bash
# Run the service locally: install, migrate the database, then serve on $HOST:$PORT (default 127.0.0.1:8000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

bash scripts/install.sh
"$PYTHON" -m app.migrate
# `promptbank serve` refuses an address other than localhost while no key exists (README "Keys, tenants and quotas")
exec "$PYTHON" -m app.cli serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
