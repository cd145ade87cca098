#!/usr/bin/env bash
# Benchmark modelfetch against curl, aria2c, hf_transfer, huggingface_hub (hf_hub_download
# and `hf download`) and pooch, on loopback nginx. Installs what it needs: aria2 and curl
# via apt-get; huggingface_hub, hf_transfer and pooch into .venv. Options: see --help.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELFETCH_EXTRAS="dev,bench" MODELFETCH_EXTRA_DEBS="aria2c:aria2 curl:curl" bash scripts/setup.sh
if [ "${1:-}" = "repo" ]; then  # the whole-repository benchmark (bench/repo.py)
    shift
    exec .venv/bin/python -m bench.repo "$@"
fi
exec .venv/bin/python -m bench.run "$@"
