#!/usr/bin/env bash
# The CPU tasks benchmark: for each task, a fresh arx (its own ARX_HOME and nats-server) runs
#   scripts/up.sh --task TASK --trials N --measure-noise R --wait
# exactly as a user would, prints the campaign's status and a summary line (noise floor, baseline,
# best, labels), then stops what it started. Logs and lineage stay under OUT/TASK for a look later.
#   scripts/bench_tasks.sh [--trials N] [--noise-runs R] [--out DIR] [TASK...]
set -euo pipefail
cd "$(dirname "$0")/.."

trials=40 noise_runs=5 out=.arx-bench tasks=()
while [ $# -gt 0 ]; do
    case "$1" in
        --trials) trials=${2:?--trials needs a value}; shift 2 ;;
        --noise-runs) noise_runs=${2:?--noise-runs needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        -*) echo "usage: scripts/bench_tasks.sh [--trials N] [--noise-runs R] [--out DIR] [TASK...]" >&2; exit 2 ;;
        *) tasks+=("$1"); shift ;;
    esac
done
[ ${#tasks[@]} -gt 0 ] || tasks=(digits-speedrun golf-mini core-mini)
scripts/setup.sh

for task in "${tasks[@]}"; do
    export ARX_HOME=$PWD/$out/$task
    rm -rf "$ARX_HOME"
    mkdir -p "$ARX_HOME"
    # A port of its own, so a user's arx on 4222 is neither reused nor disturbed.
    ARX_NATS_PORT=$(.venv/bin/python -c 'from bus.local import free_port; print(free_port())')
    export ARX_NATS_PORT
    unset NATS_URL
    trap 'scripts/down.sh >/dev/null' EXIT
    echo "== $task: $trials trials, noise over $noise_runs runs (load $(cut -d' ' -f1 /proc/loadavg))"
    start=$(date +%s)
    scripts/up.sh --task "$task" --trials "$trials" --measure-noise "$noise_runs" --wait
    .venv/bin/arx status --json >"$ARX_HOME/status.json"
    .venv/bin/python - "$ARX_HOME/status.json" "$(($(date +%s) - start))" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
labels = ", ".join(f"{k} {v}" for k, v in sorted(s["labels"].items(), key=lambda kv: -kv[1]))
print(f"{s['task']}: noise {s['noise'] * 100:.1f}% | baseline {s['baseline_score']:.4g} | best {s['best_score']:.4g}"
      f" ({s['best_trial']}) | {s['improvement_pct']:+.2f}% | {s['trials_scored']} scored | {labels}"
      f" | {sys.argv[2]} s (load {open('/proc/loadavg').read().split()[0]})")
PY
    scripts/down.sh >/dev/null
    trap - EXIT
done
