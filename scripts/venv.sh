# Sourced by demo.sh and test.sh: create ./.venv (Python >= 3.11) and install mssgate into it.
# Usage: . scripts/venv.sh [extra]   (extra: "test" installs the test tools too)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mssgate needs Python >= 3.11")'
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
VENV="$ROOT/.venv"
spec="$ROOT"
[ "${1:-}" = "test" ] && spec="$ROOT[test]"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
