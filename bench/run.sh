#!/usr/bin/env bash
# mssgate benchmark: bash bench/run.sh [--quick]   (see bench/README.md)
# Installs what it needs the way the project does (Postfix's smtp-source/smtp-sink from
# Debian's packages, the project's venv, uvloop in that venv), then runs bench/bench.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/system-deps.sh
. scripts/venv.sh test
if ! "$VENV/bin/python" -c 'import uvloop' 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uvloop
fi
export PATH="$PATH:/usr/sbin"
exec "$VENV/bin/python" bench/bench.py "$@"
