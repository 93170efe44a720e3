#!/usr/bin/env bash
# The official recipes through arx on this host's GPUs, shortened through their own settings, on
# stand-in data: what each trial is and what is checked is in scripts/gpu_smoke.py.
#   scripts/gpu_smoke.sh [--task NAME]... [--devices SPEC] [--out DIR]
# Set each task's checkout first (ARX_PARAMETER_GOLF_DIR, ARX_NANOCHAT_DIR, ARX_AIRBENCH_DIR), with the
# recipes' own packages installed in .venv (README, "Real tasks on GPUs"). A task's data variable, when
# set, is used instead of the stand-in. Exit status 1 when a check failed; the report is DIR/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/gpu_smoke.py "$@"
