#!/bin/sh
# Stops the cluster tests/slurm/up.sh started (the daemons it recorded, by pid).
set -u
STATE=${EXAQ_SLURM_STATE:-/var/lib/exaq-test-slurm}
for f in slurmd ctld; do
    p="$STATE/$f.pid"
    [ -s "$p" ] || continue
    pid=$(cat "$p")
    if kill "$pid" 2>/dev/null; then
        i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$p"
done
echo "slurm-down: stopped" >&2
