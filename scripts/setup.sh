#!/usr/bin/env bash
# Create .venv and install bertforge with pinned dependencies. Idempotent: a second run
# with unchanged pyproject.toml/requirements.lock does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp_now=$(cat pyproject.toml requirements.lock scripts/install.sh | sha256sum | cut -c1-16)
if [[ -x .venv/bin/python && -f .venv/.setup-stamp && "$(cat .venv/.setup-stamp)" == "$stamp_now" ]]; then
    exit 0
fi
echo "[setup] creating .venv and installing pinned dependencies (about 1-3 minutes)"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
# the same install step as the container images (deploy/Dockerfile*): everything, editable
bash scripts/install.sh .venv/bin/python "all,dev" --editable
.venv/bin/python -c "import bertforge, torch, transformers, optimum, onnxruntime, tritonclient" 
echo "$stamp_now" > .venv/.setup-stamp
echo "[setup] done: $(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch;print(torch.__version__)')"
