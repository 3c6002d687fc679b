#!/usr/bin/env bash
# Installs iptables (Debian's package) when it is missing, so that `kvraft chaos` and its tests
# can cut network links between local nodes. Idempotent: a no-op once iptables is there.
# Only root can install it (and only root can use it); anyone else gets a note and exit 0:
# `kvraft chaos` then says it skipped partitions.
# Usage: scripts/ensure-iptables.sh
set -euo pipefail

if command -v iptables >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-iptables: iptables is missing and this is not root; chaos partitions" \
        "will be skipped (as root: apt-get install iptables)" >&2
    exit 0
fi
log="$(mktemp)"
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables; } \
    >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "ensure-iptables: installing iptables failed" >&2
    exit 1
fi
rm -f "$log"
