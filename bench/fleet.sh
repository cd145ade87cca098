#!/usr/bin/env bash
# Fleet benchmark: N machines, one shared SeaweedFS tier, one throttled nginx origin.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bench.fleet "$@"
