#!/usr/bin/env bash
# Cold-mirror benchmark: N huggingface_hub clients through one cold `modelfetch serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bench.mirror_cold "$@"
