#!/usr/bin/env bash
# Installs StreamRec (the Python package into .venv, no system package), then runs the demo on the
# shared Taobao data set (or the simulator without it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/streamrec demo "$@"
