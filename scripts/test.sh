#!/usr/bin/env bash
# Set up and run the whole test suite: system test peers, venv, lint, format, types, tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/system-deps.sh
. scripts/venv.sh test
export PATH="$PATH:/usr/sbin"
"$VENV/bin/ruff" check mssgate tests bench
"$VENV/bin/ruff" format --check mssgate tests bench
"$VENV/bin/mypy"
# The build with the core compiled by mypyc (setup.py): what the benchmark measures, and
# tested below like the plain one. Without a C compiler, only the plain build is tested.
build_dir="$(mktemp -d)"
trap 'rm -rf "$build_dir"' EXIT
compiled="$build_dir"
status=0
bash scripts/compile.sh "$compiled" || status=$?
if [ "$status" = 3 ]; then
  compiled=""
elif [ "$status" != 0 ]; then
  exit "$status"
fi
# The benchmark once, in its quick mode, so that it cannot rot (its figures are not a test:
# the committed bench/RESULTS.md comes from a full run).
bench_out="$(mktemp -d)"
if [ -n "$compiled" ]; then
  export MSSGATE_COMPILED_DIR="$compiled"
else
  export MSSGATE_BENCH_PLAIN=1
fi
bash bench/run.sh --quick --output "$bench_out/RESULTS.md" > "$bench_out/bench.log" 2>&1 \
  || { cat "$bench_out/bench.log"; exit 1; }
echo "benchmark (quick mode) ran: $(grep -c '^| ' "$bench_out/RESULTS.md") table rows"
rm -rf "$bench_out"
echo "tests on the plain Python build:"
"$VENV/bin/pytest" -q "$@"
if [ -n "$compiled" ]; then
  echo "tests on the build with the compiled core:"
  # (tests/__init__.py refuses to run if mssgate is not imported from that build)
  MSSGATE_TEST_BUILD="$compiled" PYTHONPATH="$compiled" "$VENV/bin/pytest" -q "$@"
fi
