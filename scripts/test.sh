#!/usr/bin/env bash
# Set up .venv if needed (with the `ui` extra and headless Chromium, for the browser tests), check the
# import layers (pyproject.toml) and run the whole test suite (each test starts its own nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --ui
scripts/chromium.sh
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q "$@"
