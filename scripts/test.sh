#!/usr/bin/env bash
# The whole test suite: lint, format check, type check, the import layers (pyproject.toml
# [tool.importlinter]), pytest (real loopback servers:
# our fault-injecting origin, nginx, subprocesses for cross-process locking), then the
# release check: the sdist and wheel are built, and the wheel, installed into a fresh venv
# outside the checkout, must work (scripts/check_wheel.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests devtools bench scripts
.venv/bin/ruff format --check src tests devtools bench scripts
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "$@"
bash scripts/check_wheel.sh
