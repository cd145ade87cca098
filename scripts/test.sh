#!/usr/bin/env bash
# The whole test suite: lint, format check, type check, then pytest (real loopback servers:
# our fault-injecting origin, nginx, subprocesses for cross-process locking).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests devtools bench
.venv/bin/ruff format --check src tests devtools bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
