#!/usr/bin/env bash
# Start arx on this machine and run a campaign:
#   scripts/up.sh [--task NAME] [--trials N] [--executors K] [--measure-noise RUNS] [--wait | --detach]
# Sets up .venv, starts nats-server (unless one answers at NATS_URL), the projector, an evaluator,
# K executors and the default specialists (pids and logs under .arx/), starts a campaign and shows
# its progress. --measure-noise times RUNS runs of the starting recipe first and records that noise
# floor in the campaign instead of the task's prior. Run again, it reuses whatever is still running.
# scripts/down.sh stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

task=digits-speedrun trials=30 executors=1 mode=watch noise_runs=
usage() { echo "usage: scripts/up.sh [--task NAME] [--trials N] [--executors K] [--measure-noise RUNS] [--wait | --detach]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --task) task=${2:?--task needs a value}; shift 2 ;;
        --trials) trials=${2:?--trials needs a value}; shift 2 ;;
        --executors) executors=${2:?--executors needs a value}; shift 2 ;;
        --measure-noise) noise_runs=${2:?--measure-noise needs a value}; shift 2 ;;
        --wait) mode=wait; shift ;;
        --detach) mode=detach; shift ;;
        -h|--help) usage ;;
        *) echo "up.sh: unknown argument $1" >&2; usage ;;
    esac
done
[[ "$executors" =~ ^[1-9][0-9]*$ ]] || { echo "up.sh: --executors must be a positive integer" >&2; exit 2; }

scripts/setup.sh
export ARX_HOME=${ARX_HOME:-$PWD/.arx}
mkdir -p "$ARX_HOME/pids" "$ARX_HOME/logs"
arx=.venv/bin/arx

# The embedded server writes its own pid file; a server already at NATS_URL is left alone.
NATS_URL=$($arx server)
export NATS_URL

# start NAME CMD...: run CMD in the background unless the process named NAME is still alive.
start() {
    local name=$1; shift
    local pidfile="$ARX_HOME/pids/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "reusing $name (pid $(cat "$pidfile"))"
        return
    fi
    nohup "$@" >>"$ARX_HOME/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    echo "started $name (pid $!)"
}

start projector $arx projector
start evaluator $arx evaluator --name evaluator-1
for i in $(seq 1 "$executors"); do
    start "executor-$i" $arx executor --name "executor-$i"
done

campaign=$($arx campaign running --task "$task")
if [ -n "$campaign" ]; then
    echo "reusing running campaign $campaign"
else
    campaign=$($arx campaign start --task "$task" --trials "$trials" ${noise_runs:+--measure-noise "$noise_runs"})
    echo "started campaign $campaign ($trials trials of $task)"
fi
# The default offline specialists: each bound to a surface of the task, plus combiner and repair.
while read -r policy specialist surface; do
    start "agent-$campaign-$specialist" $arx agent --policy "$policy" --specialist "$specialist" \
        --surface "$surface" --campaign "$campaign"
done < <($arx task "$task" --roster lineage)

if [ "$mode" = detach ]; then
    echo "running in the background: .venv/bin/arx status   (stop with scripts/down.sh)"
    exit 0
fi
$arx watch --campaign "$campaign"
$arx status --campaign "$campaign"
