#!/usr/bin/env bash
# Stop exactly the processes scripts/up.sh (and the embedded server) started, from their pid files.
set -uo pipefail
cd "$(dirname "$0")/.."
pids_dir=${ARX_HOME:-$PWD/.arx}/pids
[ -d "$pids_dir" ] || { echo "nothing to stop"; exit 0; }

ours() {  # a pid file can outlive its process; never signal a stranger that reused the pid
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qE 'arx|nats-server'
}
stop() {
    local pidfile=$1 name pid
    name=$(basename "$pidfile" .pid)
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && ours "$pid"; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}
# Roles first, the server last, so nothing loses its connection mid-write.
for pidfile in "$pids_dir"/*.pid; do
    [ -e "$pidfile" ] || continue
    [ "$(basename "$pidfile")" = nats-server.pid ] && continue
    stop "$pidfile"
done
[ -f "$pids_dir/nats-server.pid" ] && stop "$pids_dir/nats-server.pid"
exit 0
