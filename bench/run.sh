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
# mssgate as deployed: the core compiled with mypyc (scripts/compile.sh), unless
# MSSGATE_BENCH_PLAIN=1 asks for the plain Python build of the checkout.
# (MSSGATE_COMPILED_DIR: a build scripts/compile.sh already made.)
built=""
if [ "${MSSGATE_BENCH_PLAIN:-0}" != 1 ]; then
  compiled="${MSSGATE_COMPILED_DIR:-}"
  if [ -z "$compiled" ]; then
    built="$(mktemp -d)"
    compiled="$built"
    status=0
    bash scripts/compile.sh "$compiled" || status=$?
    [ "$status" = 0 ] || [ "$status" = 3 ] || { rm -rf "$built"; exit "$status"; }
    [ "$status" = 0 ] || compiled=""  # (no C compiler: the plain build is measured)
  fi
  [ -z "$compiled" ] || export PYTHONPATH="$compiled${PYTHONPATH:+:$PYTHONPATH}"
fi
export PATH="$PATH:/usr/sbin"
status=0
"$VENV/bin/python" bench/bench.py "$@" || status=$?
[ -z "$built" ] || rm -rf "$built"
exit "$status"
