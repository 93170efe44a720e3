#!/usr/bin/env bash
# Start arx on this machine and run a campaign:
#   scripts/up.sh [--task NAME] [--trials N] [--executors K] [--evaluators K] [--measure-noise RUNS]
#                 [--plateau K] [--failure-storm F/K] [--deadline DURATION] [--wait | --detach]
# Sets up .venv, starts nats-server (unless one answers at NATS_URL), the projector, the evaluators,
# K executors and the default specialists (pids and logs under .arx/), starts a campaign and shows
# its progress. --measure-noise times RUNS runs of the starting recipe first and records that noise
# floor in the campaign instead of the task's prior. --plateau, --failure-storm and --deadline are the
# campaign's stop rules (see `arx campaign start --help`). Run again, it reuses whatever is still running.
#
# On another host, join a campaign that runs elsewhere with one role's processes only:
#   scripts/up.sh --join URL --role executor|evaluator|agents [--executors K] [--evaluators K] [--task NAME]
# URL is the servers' NATS_URL; give the role's credential in ARX_CREDENTIALS (and the servers' CA in
# ARX_TLS_CA for tls:// servers). agents join the latest running campaign of --task.
# scripts/down.sh stops exactly what up.sh started on this host.
# scripts/up.sh -h (or --help) prints this usage.
set -euo pipefail
cd "$(dirname "$0")/.."

task=digits-speedrun trials=30 executors=1 evaluators=1 mode=watch noise_runs= join= role=
stop_rules=()  # passed on to `arx campaign start`
usage() {
    echo "usage: scripts/up.sh [--task NAME] [--trials N] [--executors K] [--evaluators K] [--measure-noise RUNS]" >&2
    echo "                     [--plateau K] [--failure-storm F/K] [--deadline DURATION] [--wait | --detach]" >&2
    echo "       scripts/up.sh --join URL --role executor|evaluator|agents [--executors K] [--evaluators K] [--task NAME]" >&2
    echo "       scripts/up.sh -h | --help" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --task) task=${2:?--task needs a value}; shift 2 ;;
        --trials) trials=${2:?--trials needs a value}; shift 2 ;;
        --executors) executors=${2:?--executors needs a value}; shift 2 ;;
        --evaluators) evaluators=${2:?--evaluators needs a value}; shift 2 ;;
        --join) join=${2:?--join needs the servers\' URL}; shift 2 ;;
        --role) role=${2:?--role needs a value}; shift 2 ;;
        --measure-noise) noise_runs=${2:?--measure-noise needs a value}; shift 2 ;;
        --plateau|--failure-storm|--deadline) stop_rules+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        --wait) mode=wait; shift ;;
        --detach) mode=detach; shift ;;
        -h|--help) usage ;;
        *) echo "up.sh: unknown argument $1" >&2; usage ;;
    esac
done
[[ "$executors" =~ ^[1-9][0-9]*$ ]] || { echo "up.sh: --executors must be a positive integer" >&2; exit 2; }
[[ "$evaluators" =~ ^[1-9][0-9]*$ ]] || { echo "up.sh: --evaluators must be a positive integer" >&2; exit 2; }
if [ -n "$join" ]; then
    case "$role" in executor|evaluator|agents) ;; *) echo "up.sh: --join needs --role executor, evaluator or agents" >&2; exit 2 ;; esac
elif [ -n "$role" ]; then
    echo "up.sh: --role goes with --join URL" >&2; exit 2
fi

scripts/setup.sh
export ARX_HOME=${ARX_HOME:-$PWD/.arx}
mkdir -p "$ARX_HOME/pids" "$ARX_HOME/logs"
arx=.venv/bin/arx

if [ -n "$join" ]; then
    export NATS_URL=$join  # the servers run elsewhere: start none here
else
    # The embedded server writes its own pid file; a server already at NATS_URL is left alone.
    NATS_URL=$($arx server)
    export NATS_URL
fi

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

start_executors() {
    # Names carry the host when joining, so that the log tells executors on different hosts apart.
    local prefix=executor${join:+-${HOSTNAME%%.*}}
    for i in $(seq 1 "$executors"); do
        start "executor-$i" $arx executor --name "$prefix-$i"
    done
}
start_evaluators() {
    local prefix=evaluator${join:+-${HOSTNAME%%.*}}
    for i in $(seq 1 "$evaluators"); do
        start "evaluator-$i" $arx evaluator --name "$prefix-$i"
    done
}
# The default offline specialists of a campaign: each bound to a surface of the task, plus combiner and repair.
start_agents() {
    local campaign=$1
    while read -r policy specialist surface; do
        start "agent-$campaign-$specialist" $arx agent --policy "$policy" --specialist "$specialist" \
            --surface "$surface" --campaign "$campaign"
    done < <($arx task "$task" --roster lineage)
}

case "$role" in
    executor) start_executors; exit 0 ;;
    evaluator) start_evaluators; exit 0 ;;
    agents)
        campaign=$($arx campaign running --task "$task")
        [ -n "$campaign" ] || { echo "up.sh: no campaign of $task is running at $join" >&2; exit 1; }
        start_agents "$campaign"; exit 0 ;;
esac

start projector $arx projector
start_evaluators
start_executors

campaign=$($arx campaign running --task "$task")
if [ -n "$campaign" ]; then
    echo "reusing running campaign $campaign"
else
    campaign=$($arx campaign start --task "$task" --trials "$trials" ${noise_runs:+--measure-noise "$noise_runs"} \
        ${stop_rules[@]+"${stop_rules[@]}"})
    echo "started campaign $campaign ($trials trials of $task)"
fi
start_agents "$campaign"

if [ "$mode" = detach ]; then
    echo "running in the background: .venv/bin/arx status   (stop with scripts/down.sh)"
    exit 0
fi
$arx watch --campaign "$campaign"
$arx status --campaign "$campaign"
