#!/usr/bin/env bash
# Set up .venv if needed and run the whole test suite (each test starts its own nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
