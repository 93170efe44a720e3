#!/usr/bin/env bash
# Set up .venv if needed, check the import layers (pyproject.toml) and run the whole test suite (each
# test starts its own nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q "$@"
