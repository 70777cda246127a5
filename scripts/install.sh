#!/usr/bin/env bash
# Install bertforge and its pinned dependency set into the Python environment PYTHON (a venv's python).
# The one install step shared by scripts/setup.sh (developers, CI) and deploy/Dockerfile* (the images):
#   scripts/install.sh PYTHON [EXTRAS] [--editable]
# EXTRAS defaults to "all,dev" (everything); the images install "serve". requirements.lock pins every
# package, so a laptop, CI and an image resolve the same versions.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:?usage: scripts/install.sh PYTHON [EXTRAS] [--editable]}"
extras="${2:-all,dev}"
editable="${3:-}"
constraints="$here/requirements.lock"
# The lock pins torch 2.13.0+cpu, a cp311 wheel. Other Pythons (3.12) take the same release from PyPI.
if [[ "$("$python" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" != True ]]; then
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    sed 's/^torch==\(.*\)+cpu$/torch==\1/' "$here/requirements.lock" > "$constraints"
fi
"$python" -m pip install --quiet --upgrade pip
# The CPU torch wheel lies on local disk here; pinning it keeps pip off the multi-GB CUDA build.
if [[ "$editable" == "--editable" ]]; then
    "$python" -m pip install --quiet -c "$constraints" -e "$here[$extras]"
else
    "$python" -m pip install --quiet -c "$constraints" "$here[$extras]"
fi
