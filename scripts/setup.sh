#!/usr/bin/env bash
# Create .venv and install arx into it; a no-op when pyproject.toml has not changed since last time.
#   scripts/setup.sh [--ui]    --ui: also the `ui` extra (Datasette, for `arx ui`)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=test
case "${1:-}" in
    --ui) extras=test,ui ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--ui]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
# The stamp names what was installed from which pyproject.toml: asking for less than that is a no-op too.
stamp=.venv/.arx-installed
hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
installed=$(cat "$stamp" 2>/dev/null || true)
if [ "$installed" != "$hash $extras" ] && [ "$installed" != "$hash test,ui" ]; then
    # torch is pinned in pyproject.toml: the CPU build from local disk, never a multi-GB CUDA build.
    # -qq: errors only; with a single -q, pip still shows setuptools' "Editable installation" notice.
    .venv/bin/python -m pip install -qq --disable-pip-version-check -e ".[$extras]"
    echo "$hash $extras" > "$stamp"
fi
