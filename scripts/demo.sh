#!/usr/bin/env bash
# Set up and run the gateway on the embedded demo policy: 127.0.0.1:2525, relayed mail lands in
# ./mssgate-outbox/<route>/. Extra arguments go to `mssgate serve` (e.g. --config FILE).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
exec "$VENV/bin/mssgate" serve "$@"
