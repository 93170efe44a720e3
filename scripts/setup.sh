#!/usr/bin/env bash
# Create .venv and install arx into it; a no-op when pyproject.toml has not changed since last time.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.arx-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # torch is pinned in pyproject.toml: the CPU build from local disk, never a multi-GB CUDA build.
    # -qq: errors only; with a single -q, pip still shows setuptools' "Editable installation" notice.
    .venv/bin/python -m pip install -qq --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
fi
