#!/usr/bin/env bash
# End-to-end demo with no internet: generate a GGUF model, serve it with nginx on loopback,
# fetch it with the modelfetch CLI (progress bar), fetch again (verified cache hit), list and
# verify the cache. Pass a size in MiB to change the model size (default 256).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m devtools.demo "$@"
