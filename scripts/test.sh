#!/usr/bin/env bash
# Set up and run the whole test suite: system test peers, venv, lint, format, types, tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/system-deps.sh
. scripts/venv.sh test
export PATH="$PATH:/usr/sbin"
"$VENV/bin/ruff" check mssgate tests
"$VENV/bin/ruff" format --check mssgate tests
"$VENV/bin/mypy"
"$VENV/bin/pytest" -q "$@"
