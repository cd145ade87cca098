#!/usr/bin/env bash
# Benchmark modelfetch against curl, aria2c, huggingface_hub and pooch on loopback nginx.
# Installs what it needs (aria2, curl via apt-get; huggingface_hub, pooch into .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
MODELFETCH_EXTRAS="dev,bench" MODELFETCH_EXTRA_DEBS="aria2c:aria2 curl:curl" bash scripts/setup.sh
exec .venv/bin/python -m bench.run "$@"
