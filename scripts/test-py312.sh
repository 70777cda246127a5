#!/usr/bin/env bash
# Python 3.12: set up .venv312 with the same install step as setup.sh (scripts/install.sh, pinned by
# requirements.lock; torch comes as PyPI's 2.13.0 build, as the lock's +cpu wheel is cp311 only) and run the
# quick test subset. Extra arguments go to pytest (default: -m "not slow").
#   PYTHON312=/path/to/python3.12 bash scripts/test-py312.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON312=${PYTHON312:-$HOME/.pyenv/versions/3.12.1/bin/python3.12}
[[ -x "$PYTHON312" ]] || PYTHON312=$(command -v python3.12 || true)
[[ -n "$PYTHON312" ]] || { echo "[py312] no Python 3.12: set PYTHON312 (pyenv install 3.12, or Debian/deadsnakes python3.12)" >&2; exit 2; }
stamp_now=$(cat pyproject.toml requirements.lock scripts/install.sh | sha256sum | cut -c1-16)
if [[ ! -x .venv312/bin/python || ! -f .venv312/.setup-stamp || "$(cat .venv312/.setup-stamp)" != "$stamp_now" ]]; then
    echo "[py312] creating .venv312 with $("$PYTHON312" --version) and installing pinned dependencies"
    [[ -x .venv312/bin/python ]] || "$PYTHON312" -m venv .venv312
    bash scripts/install.sh .venv312/bin/python "all,dev" --editable
    .venv312/bin/python -c "import bertforge, torch, transformers, optimum, onnxruntime, tritonclient"
    echo "$stamp_now" > .venv312/.setup-stamp
fi
echo "[py312] $(.venv312/bin/python --version), torch $(.venv312/bin/python -c 'import torch; print(torch.__version__)')"
if [[ $# -eq 0 ]]; then set -- -m "not slow"; fi
exec .venv312/bin/python -m pytest -q -p no:cacheprovider --durations=10 "$@"
