#!/bin/sh
# make demo: a whole sweep on the small model in tests/data/tiny-exaone4, on this machine's CPU.
#
#   sh tests/demo.sh BINDIR        (make demo builds BINDIR = build/release/bin first)
#
# Creates a temporary home (kept afterwards: it holds the reports; EXAQ_DEMO_HOME=DIR picks
# another place), starts exaqd there with one CPU slot, submits lanes/examples/demo.yaml, shows
# the progress with `exaqctl watch`, waits for ranking and packaging, prints the ranking
# (`exaqctl rank --md`) and where the reports and zips are, and stops the daemon (also on
# Ctrl-C or an error). Lanes that fail (e.g. a stage kind this build does not have yet) are
# listed with their error; the demo still exits 0 as long as the daemon ran the sweep to the
# end and the baseline (the native eval stages on the base model) is done. EXAQ_DEMO_YAML=FILE
# runs another lanes file the same way.
set -eu
BIN=${1:?usage: sh tests/demo.sh BINDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
YAML=${EXAQ_DEMO_YAML:-$ROOT/lanes/examples/demo.yaml}
for b in exaqd exaqctl exaq-worker; do
    [ -x "$BIN/$b" ] || { echo "demo: $BIN/$b is missing (run: make)" >&2; exit 1; }
done
[ -f "$ROOT/tests/data/tiny-exaone4/model.safetensors" ] ||
    { echo "demo: tests/data/tiny-exaone4 is missing" >&2; exit 1; }

if [ -n "${EXAQ_DEMO_HOME:-}" ]; then
    mkdir -p "$EXAQ_DEMO_HOME"
    DIR=$(cd "$EXAQ_DEMO_HOME" && pwd)
else
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/exaq-demo.XXXXXX")
fi
export EXAQ_HOME="$DIR/home"
ctl() { "$BIN/exaqctl" "$@"; }

PID=
stop_daemon() {
    [ -n "$PID" ] || return 0
    ctl shutdown >/dev/null 2>&1 || true
    n=50
    while kill -0 "$PID" 2>/dev/null && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
    kill "$PID" 2>/dev/null || true
    PID=
}
on_exit() {
    rc=$?
    trap - EXIT INT TERM
    stop_daemon
    exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

echo "== exaq demo: home $EXAQ_HOME"
"$BIN/exaqd" --slots 1 --backend cpu || { echo "demo: exaqd did not start" >&2; exit 1; }
PID=$(cat "$EXAQ_HOME/exaqd.pid")
ctl ping

echo "== submitting $YAML"
S=$(ctl submit "$YAML")
echo "sweep $S"

echo "== progress (exaqctl watch $S)"
ctl watch "$S" || true
# watch returns when every lane has ended; wait also covers ranking and packaging.
ctl wait "$S" --timeout 3600 || { echo "demo: the sweep did not finish" >&2; exit 1; }

ctl status "$S" --json >"$DIR/status.json"
echo
echo "== ranking (exaqctl rank $S --md)"
rank_ok=1
ctl rank "$S" --md || rank_ok=0

if command -v jq >/dev/null 2>&1; then
    failed=$(jq -r '.sweeps[0].lanes[] | select(.state != "done") |
        "\(.id)\t\(.state)\t\([.stages[] | select(.state == "failed") |
        "\(.name): \(.error.msg // .error.class // "failed")"] | first // "")"' "$DIR/status.json")
    base=$(jq -r '.sweeps[0].lanes[] | select(.baseline) | .state' "$DIR/status.json")
else
    failed=
    base="done"
    grep -q '"state": *"failed"' "$DIR/status.json" && failed="(install jq to list them)"
fi
if [ -n "$failed" ]; then
    echo
    echo "== note: these lanes did not finish; they are listed in the ranking without a rank"
    printf '%s\n' "$failed" | while IFS="$(printf '\t')" read -r lane state why; do
        echo "  $lane: $state${why:+ ($why)}"
    done
    if printf '%s\n' "$failed" | grep -q "not implemented"; then
        echo "  (a stage kind this build does not implement yet: the sweep itself ran to the end)"
    fi
fi

SW=$EXAQ_HOME/sweeps/$S
echo
echo "== results"
echo "  ranking:  $SW/rank.csv"
echo "  reports:  $SW/report.md"
echo "            $SW/report.html"
zips=$(ls "$SW"/submissions/*.zip 2>/dev/null || true)
if [ -n "$zips" ]; then
    echo "  zips:     $(echo "$zips" | head -n 1)"
    echo "$zips" | tail -n +2 | sed 's/^/            /'
else
    echo "  zips:     none ($SW/submissions/ is empty: no done lane passed packaging)"
fi
echo "  logs:     $BIN/exaqctl logs $S LANE   (with EXAQ_HOME=$EXAQ_HOME and exaqd running)"
echo "  the home stays in $DIR; remove it with: rm -rf $DIR"

stop_daemon
if [ "$base" != "done" ]; then
    echo "demo: the baseline (native eval stages on the base model) did not finish" >&2
    exit 1
fi
[ "$rank_ok" = 1 ] || echo "demo: ranking failed (see above)" >&2
echo "== demo done"
