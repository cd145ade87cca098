#!/usr/bin/env bash
# Prove the package works when installed from its wheel, not from this checkout: build the
# sdist and, from it, the wheel (python -m build), inspect both (scripts/check_dist.py),
# install the wheel with its dependencies into a fresh venv in a temporary directory, and
# from a directory outside the checkout run `modelfetch --version`, `import modelfetch` and
# two `modelfetch get` of a file served on loopback (scripts/wheel_smoke.py). One line per
# step; exits non-zero on the first failure. Run by scripts/test.sh (so by .ci/run).
#
# WHEEL_CHECK_PYTHON=/path/to/python3.X runs the installed half with another interpreter
# (default: the one behind .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout="$(pwd -P)"
py=.venv/bin/python

step() { echo "check_wheel: $*"; }
fail() {
    echo "check_wheel: FAIL: $*" >&2
    exit 1
}
# Show a quiet command's output only when it fails.
quietly() {
    local log="$1"
    shift
    if ! "$@" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" | tail -n 40 >&2
        return 1
    fi
}

[ -x "$py" ] || fail "no .venv: run scripts/setup.sh first"
version="$("$py" scripts/check_dist.py --source-version)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/modelfetch-wheel-check.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
case "$(cd "$tmp" && pwd -P)/" in
"$checkout"/*) fail "the temporary directory $tmp is inside the checkout" ;;
esac

step "building the sdist, then the wheel from the sdist (python -m build), version $version"
quietly "$tmp/build.log" "$py" -m build --outdir "$tmp/dist" . || fail "python -m build failed"
"$py" scripts/check_dist.py "$tmp/dist" || fail "the built sdist or wheel is incomplete"
wheel="$tmp/dist/modelfetch-$version-py3-none-any.whl"

python="${WHEEL_CHECK_PYTHON:-$py}"
step "creating a fresh venv outside the checkout with $("$python" -c 'import sys; print("Python", sys.version.split()[0])')"
quietly "$tmp/venv.log" "$python" -m venv "$tmp/venv" || fail "python -m venv failed"

step "installing $(basename "$wheel") and its dependencies into it"
quietly "$tmp/install.log" env -u PYTHONPATH "$tmp/venv/bin/python" -m pip install \
    --disable-pip-version-check "$wheel" || fail "pip install of the wheel failed"

mkdir "$tmp/work"
cp scripts/wheel_smoke.py "$tmp/work/"
step "running the installed modelfetch from $tmp/work"
(cd "$tmp/work" && env -u PYTHONPATH "$tmp/venv/bin/python" -I wheel_smoke.py --version "$version") ||
    fail "the installed wheel does not work"
step "ok: modelfetch $version installs from its wheel and works outside the checkout"
