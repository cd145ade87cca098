#!/usr/bin/env bash
# Install everything modelfetch's demo and tests need: Debian packages (nginx, openssl) and a
# virtualenv in .venv with the package and its dev tools. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq >/dev/null
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
        echo "setup: please install these Debian packages: $*" >&2
        exit 1
    fi
}

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
for extra in ${MODELFETCH_EXTRA_DEBS:-}; do
    command -v "${extra%%:*}" >/dev/null 2>&1 || missing+=("${extra#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} with apt-get" >&2
    apt_install "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.modelfetch-installed"
# The version is part of the stamp: an editable install's metadata (what
# importlib.metadata reports) is only rewritten by reinstalling.
want="$(cat pyproject.toml src/modelfetch/_version.py | sha256sum | cut -d' ' -f1) ${MODELFETCH_EXTRAS:-dev}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing modelfetch[${MODELFETCH_EXTRAS:-dev}] into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${MODELFETCH_EXTRAS:-dev}]"
    echo "$want" > "$stamp"
fi
