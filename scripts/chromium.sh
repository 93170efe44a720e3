#!/usr/bin/env bash
# Make sure headless Chromium is on this machine for the browser tests (tests/test_ui.py): Debian's
# package, installed with apt-get when it is absent and this user may install packages. Where it
# cannot be installed this says why and exits 0: those tests then skip with that reason (never in CI).
set -uo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "chromium.sh: no chromium, and only root on a Debian-like machine can install it here" \
        "(apt-get install chromium)" >&2
    exit 0
fi
echo "chromium.sh: installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
log=/tmp/arx-chromium-install.log
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    echo "chromium.sh: apt-get install chromium failed (see $log)" >&2
fi
exit 0
