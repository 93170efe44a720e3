#!/usr/bin/env bash
# Start arx on this machine and run a campaign:
#   scripts/up.sh [--task NAME] [--trials N] [--executors K] [--evaluators K] [--devices SPEC]
#                 [--measure-noise RUNS] [--plateau K] [--failure-storm F/K] [--deadline DURATION] [--budget-usd D]
#                 [--budget-device-hours KIND=H]... [--short] [--ui] [--ui-port P] [--wait | --detach]
# Sets up .venv, starts nats-server (unless one answers at NATS_URL), the projector, the evaluators,
# K executors (on --devices: cpu, the default, auto, or cuda:0,cuda:1) and the default specialists
# (pids and logs under .arx/), starts a campaign and shows its progress. --measure-noise times RUNS
# runs of the starting recipe first and records that noise floor in the campaign instead of the task's
# prior. --plateau, --failure-storm and --deadline are the campaign's stop rules, --budget-usd and
# --budget-device-hours its budgets (`arx campaign start --help`). --short runs the recipe shrunk through its own settings (the task's [short] table). --ui
# also serves lineage.db and the campaign report in the browser (`arx ui`, on 127.0.0.1:8001 or
# --ui-port P) and prints its address. Run again, it reuses whatever is still running.
#
# On another host, join a campaign that runs elsewhere with one role's processes only:
#   scripts/up.sh --join URL --role executor|evaluator|agents [--executors K] [--evaluators K] [--devices SPEC]
#                 [--task NAME]
# URL is the servers' NATS_URL; give the role's credential in ARX_CREDENTIALS (and the servers' CA in
# ARX_TLS_CA for tls:// servers). agents join the latest running campaign of --task.
# scripts/down.sh stops exactly what up.sh started on this host.
# scripts/up.sh -h (or --help) prints this usage.
set -euo pipefail
cd "$(dirname "$0")/.."

task=digits-speedrun trials=30 executors=1 evaluators=1 devices=cpu mode=watch noise_runs= join= role= ui= ui_port=8001
limits=()  # stop rules and budgets, passed on to `arx campaign start`
usage() {
    echo "usage: scripts/up.sh [--task NAME] [--trials N] [--executors K] [--evaluators K] [--devices SPEC]" >&2
    echo "                     [--measure-noise RUNS] [--plateau K] [--failure-storm F/K] [--deadline DURATION]" >&2
    echo "                     [--budget-usd D]" >&2
    echo "                     [--budget-device-hours KIND=H]... [--short] [--ui] [--ui-port P]" >&2
    echo "                     [--wait | --detach]" >&2
    echo "       scripts/up.sh --join URL --role executor|evaluator|agents [--executors K] [--evaluators K]" >&2
    echo "                     [--devices SPEC] [--task NAME]" >&2
    echo "       scripts/up.sh -h | --help" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --task) task=${2:?--task needs a value}; shift 2 ;;
        --trials) trials=${2:?--trials needs a value}; shift 2 ;;
        --executors) executors=${2:?--executors needs a value}; shift 2 ;;
        --evaluators) evaluators=${2:?--evaluators needs a value}; shift 2 ;;
        --devices) devices=${2:?--devices needs a value}; shift 2 ;;
        --join) join=${2:?--join needs the servers\' URL}; shift 2 ;;
        --role) role=${2:?--role needs a value}; shift 2 ;;
        --measure-noise) noise_runs=${2:?--measure-noise needs a value}; shift 2 ;;
        --plateau|--failure-storm|--deadline|--budget-usd|--budget-device-hours)
            limits+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        --short) limits+=("$1"); shift ;;
        --ui) ui=1; shift ;;
        --ui-port) ui=1 ui_port=${2:?--ui-port needs a value}; shift 2 ;;
        --wait) mode=wait; shift ;;
        --detach) mode=detach; shift ;;
        -h|--help) usage ;;
        *) echo "up.sh: unknown argument $1" >&2; usage ;;
    esac
done
[[ "$executors" =~ ^[1-9][0-9]*$ ]] || { echo "up.sh: --executors must be a positive integer" >&2; exit 2; }
[[ "$evaluators" =~ ^[1-9][0-9]*$ ]] || { echo "up.sh: --evaluators must be a positive integer" >&2; exit 2; }
[[ "$devices" =~ ^(cpu|auto|cuda:[0-9]+(,cuda:[0-9]+)*)$ ]] || {
    echo "up.sh: --devices takes cpu, auto or a list like cuda:0,cuda:1" >&2; exit 2; }
if [ -n "$join" ]; then
    case "$role" in executor|evaluator|agents) ;; *) echo "up.sh: --join needs --role executor, evaluator or agents" >&2; exit 2 ;; esac
elif [ -n "$role" ]; then
    echo "up.sh: --role goes with --join URL" >&2; exit 2
fi
if [ -n "$ui" ] && [ -n "$join" ]; then
    echo "up.sh: --ui serves the lineage.db of the host that runs the campaign's projector, not a --join host" >&2
    exit 2
fi

scripts/setup.sh ${ui:+--ui}
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
        start "executor-$i" $arx executor --name "$prefix-$i" --devices "$devices"
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

# The UI reads the projector's file, so it starts once the projector has made it. Prints the address the
# UI printed once it listened (or, one already running, the address it printed when it started).
start_ui() {
    local log=$ARX_HOME/logs/ui.log skip=0 said line=
    for _ in $(seq 150); do [ -e "$ARX_HOME/lineage.db" ] && break; sleep 0.2; done
    [ -f "$log" ] && skip=$(wc -l <"$log")
    said=$(start ui $arx ui --port "$ui_port")
    echo "$said"
    [[ $said == reusing* ]] && skip=0
    for _ in $(seq 150); do
        line=$(tail -n "+$((skip + 1))" "$log" | grep "^arx ui: http" | tail -1 || true)
        [ -n "$line" ] || ! kill -0 "$(cat "$ARX_HOME/pids/ui.pid")" 2>/dev/null && break
        sleep 0.2
    done
    if [ -n "$line" ]; then
        echo "ui: ${line#arx ui: }"
    else
        echo "up.sh: the UI did not start: $(tail -n 1 "$log")  (log: $log)" >&2
    fi
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
[ -z "$ui" ] || start_ui
start_evaluators
start_executors

campaign=$($arx campaign running --task "$task")
if [ -n "$campaign" ]; then
    echo "reusing running campaign $campaign"
else
    campaign=$($arx campaign start --task "$task" --trials "$trials" \
        ${noise_runs:+--measure-noise "$noise_runs" --devices "$devices"} ${limits[@]+"${limits[@]}"})
    echo "started campaign $campaign ($trials trials of $task)"
fi
start_agents "$campaign"

if [ "$mode" = detach ]; then
    echo "running in the background: .venv/bin/arx status   (stop with scripts/down.sh)"
    exit 0
fi
$arx watch --campaign "$campaign"
$arx status --campaign "$campaign"
