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
# The benchmark once, in its quick mode, so that it cannot rot (its figures are not a test:
# the committed bench/RESULTS.md comes from a full run).
bench_out="$(mktemp -d)"
bash bench/run.sh --quick --output "$bench_out/RESULTS.md" > "$bench_out/bench.log" 2>&1 \
  || { cat "$bench_out/bench.log"; exit 1; }
echo "benchmark (quick mode) ran: $(grep -c '^| ' "$bench_out/RESULTS.md") table rows"
rm -rf "$bench_out"
"$VENV/bin/pytest" -q "$@"
