#!/usr/bin/env bash
# Build mssgate with its pure core compiled by mypyc (setup.py, MSSGATE_COMPILE=1) and install
# that build alone into DIR, to put first on PYTHONPATH (its dependencies come from the venv).
# Usage (after . scripts/venv.sh): bash scripts/compile.sh DIR
# Exits with 3, nothing built, when there is no C compiler (the callers fall back to plain).
set -euo pipefail
if ! command -v cc >/dev/null && ! command -v gcc >/dev/null; then
  echo "no C compiler: no compiled build" >&2
  exit 3
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
out="$1"
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
MSSGATE_COMPILE=1 "$VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check \
  --no-deps --wheel-dir "$wheels" "$ROOT"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --upgrade --target "$out" "$wheels"/mssgate-*.whl
