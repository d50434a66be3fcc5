#!/usr/bin/env bash
# The test suite: unit, contract and integration tests (real Tansu broker, real worker processes,
# real milvus-lite). STREAMREC_RELIABILITY_SCALE=full runs the large fault-injection sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
