#!/bin/sh
# Fault injection that stays (`make torture`; not part of `make test`). For a bounded time it
# runs four scenarios against real exaqd daemons in temporary homes, then prints one table:
#
#   kill9      sweeps of exec lanes while exaqd and its workers are killed with kill -9 at
#              random moments; every acknowledged sweep must end with every lane done, no stage
#              may finish twice, exaqd may die only when we kill it
#   diskfull   submits into a home on a full 16 MB tmpfs, then with space again; no sweep that
#              submit acknowledged may be missing after a kill -9 and restart (root only: skipped
#              with the reason otherwise)
#   slowclient a client that pipelines requests and never reads, and 300 half-sent 900 KB
#              frames (tests/integ/test_slow_client, once per round)
#   malformed  base models with FIFOs, device links, symlink loops, nested dirs; lanes files of
#              garbage, bombs and huge numbers; protocol garbage (tests/integ/test_proto_robust):
#              each must get an answer (no hang) and leave exaqd serving
#
# Columns: tried, survived, lost (an acknowledged sweep missing or unfinished), duplicated (a
# stage with two finished attempts, or a sweep listed twice), crashed (exaqd died unasked, hung,
# or stopped answering). Exit status 1 when anything was lost, duplicated or crashed.
#
#   EXAQ_TORTURE_S=SEC   total duration (default 300, at most 600); the scenarios share it
#   EXAQ_TORTURE_ONLY="kill9 ..."   run only these scenarios
#   EXAQ_KEEP=1          keep the temporary dir (homes, logs) for a look afterwards
#   EXAQ_BIN, EXAQ_TEST_BIN   the binaries (make torture sets them)
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
BIN=${EXAQ_BIN:-$SRC/build/release/bin}
TBIN=${EXAQ_TEST_BIN:-$SRC/build/release/tests}
TOTAL=${EXAQ_TORTURE_S:-300}
[ "$TOTAL" -gt 600 ] && TOTAL=600
[ "$TOTAL" -lt 40 ] && TOTAL=40
for b in exaqd exaqctl exaq-worker; do
    [ -x "$BIN/$b" ] || { echo "torture: $BIN/$b is missing (make all)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "torture: needs jq" >&2; exit 2; }
T=$(mktemp -d /tmp/exaq-torture.XXXXXX)
export EXAQ_HEARTBEAT_S=0.5 EXAQ_HEARTBEAT_GRACE_S=10 EXAQ_KILL_GRACE_S=3
export EXAQ_QUARANTINE_AFTER=1000 # the storm kills workers on purpose
ROWS=$T/rows
: >"$ROWS"
MOUNTED=""

stop_home() { # HOME
    p=$(cat "$1/exaqd.pid" 2>/dev/null || true)
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null
    pkill -9 -f "exaq-worker serve --home $1" 2>/dev/null
    return 0
}
on_exit() {
    for h in "$T"/h-*; do [ -d "$h" ] && stop_home "$h"; done
    sleep 0.3
    [ -n "$MOUNTED" ] && { umount "$MOUNTED" 2>/dev/null || umount -l "$MOUNTED" 2>/dev/null; }
    if [ -n "${EXAQ_KEEP:-}" ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

now() { date +%s; }
rnd() { # N: a random integer in [0, N)
    od -An -N4 -tu4 /dev/urandom | awk -v n="$1" '{ print $1 % n }'
}
row() { # NAME TRIED SURVIVED LOST DUP CRASHED [NOTE]
    printf '%s %s %s %s %s %s %s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${7:-}" >>"$ROWS"
}
log() { echo "torture: $*" >&2; }

H=""
ctl() { "$BIN/exaqctl" --home "$H" "$@"; }
alive() { p=$(cat "$H/exaqd.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }
start() { # ARGS: starts exaqd on $H; 0 when it answers
    "$BIN/exaqd" --home "$H" "$@" >"$T/start.log" 2>&1 || { log "exaqd did not start: $(cat "$T/start.log")"; return 1; }
    n=0
    while [ $n -lt 100 ]; do ctl ping >/dev/null 2>&1 && return 0; sleep 0.1; n=$((n + 1)); done
    return 1
}
kill9() {
    p=$(cat "$H/exaqd.pid" 2>/dev/null || true)
    [ -n "$p" ] || return 0
    kill -9 "$p" 2>/dev/null
    n=0
    while kill -0 "$p" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
}
fake_model() {
    mkdir -p "$1"
    printf '{"model_type": "exaone4"}\n' >"$1/config.json"
}

# ===== kill -9 storm ===========================================================================
scenario_kill9() { # SECONDS
    end=$(($(now) + $1))
    H=$T/h-kill9
    W=$T/w-kill9
    mkdir -p "$W"
    fake_model "$W/m"
    : >"$W/acked"
    crashed=0 kills=0 wkills=0 i=0
    start --slots 2 || { row kill9 0 0 0 0 1 "exaqd did not start"; return; }
    while [ "$(now)" -lt "$end" ]; do
        # Keep a few sweeps in flight, each with its own keys.
        inflight=$(ctl status --json 2>/dev/null | jq '[.sweeps[] | select(.state != "ended")] | length' 2>/dev/null)
        if [ "${inflight:-9}" -lt 3 ]; then
            i=$((i + 1))
            cat >"$W/s$i.yaml" <<YAML
version: 1
sweep: storm$i
base_model: ./m
defaults: {retries: 20}
lanes:
  - id: a
    stages:
      - exec: {produces: both, run: "sleep 0.$(rnd 9); cp -R {input}/. {output}/; echo $i > {output}/n"}
      - exec: {produces: metrics, run: "sleep 0.$(rnd 9); printf '{\"v\": $i}' > {metrics}"}
  - id: b
    stages:
      - exec: {produces: both, run: "sleep 1.$(rnd 9); cp -R {input}/. {output}/; echo b$i > {output}/n"}
  - id: c
    stages:
      - exec: {produces: metrics, run: "sleep 0.$(rnd 5); printf '{\"w\": $i}' > {metrics}"}
YAML
            id=$(ctl submit "$W/s$i.yaml" 2>>"$W/submit.err") && echo "$id" >>"$W/acked"
        fi
        sleep "0.$(rnd 9)"
        if ! alive; then
            crashed=$((crashed + 1))
            log "kill9: exaqd died unasked"
            start --slots 2 || break
            continue
        fi
        case $(rnd 4) in
        0)
            kill9
            kills=$((kills + 1))
            sleep "0.$(rnd 5)"
            start --slots 2 || { crashed=$((crashed + 1)); break; }
            ;;
        1 | 2)
            wp=$(pgrep -f "exaq-worker serve --home $H" | head -n "$(($(rnd 2) + 1))" | tail -n 1)
            [ -n "$wp" ] && kill -9 "$wp" 2>/dev/null && wkills=$((wkills + 1))
            ;;
        *) ;;
        esac
    done
    # The storm is over: one last crash, then everything acknowledged must finish.
    alive && kill9
    start --slots 2 || crashed=$((crashed + 1))
    tried=0 lost=0 dup=0 surv=0
    for id in $(cat "$W/acked"); do
        tried=$((tried + 1))
        ctl wait "$id" --timeout 180 >/dev/null 2>&1
        ctl status "$id" --json >"$W/st.json" 2>/dev/null || echo '{"sweeps": []}' >"$W/st.json"
        if ! jq -e --arg id "$id" '[.sweeps[] | select(.id == $id)] | length == 1 and
                (.[0].lanes | all(.state == "done"))' "$W/st.json" >/dev/null; then
            lost=$((lost + 1))
            log "kill9: sweep $id lost or unfinished: $(jq -c '[.sweeps[].lanes[] | {id, state}]' "$W/st.json")"
        elif jq -e '[.sweeps[0].lanes[].stages[] | [.history[] | select(.state == "done")] | length]
                | any(. > 1)' "$W/st.json" >/dev/null; then
            dup=$((dup + 1))
            log "kill9: sweep $id has a stage that finished twice"
        else
            surv=$((surv + 1))
        fi
    done
    alive || crashed=$((crashed + 1))
    stop_home "$H"
    row kill9 "$tried" "$surv" "$lost" "$dup" "$crashed" "$kills exaqd kills, $wkills worker kills"
}

# ===== full disk ===============================================================================
scenario_diskfull() { # SECONDS
    end=$(($(now) + $1))
    H=$T/h-diskfull
    W=$T/w-diskfull
    if [ "$(id -u)" != 0 ]; then
        row diskfull 0 0 0 0 0 "skipped: needs root to mount a tmpfs"
        return
    fi
    mkdir -p "$H" "$W"
    if ! mount -t tmpfs -o size=16m tmpfs "$H" 2>"$W/mount.err"; then
        row diskfull 0 0 0 0 0 "skipped: cannot mount a tmpfs: $(head -n1 "$W/mount.err")"
        return
    fi
    MOUNTED=$H
    fake_model "$W/m"
    : >"$W/acked"
    tried=0 crashed=0 i=0
    start --slots 1 || { row diskfull 0 0 0 0 1 "exaqd did not start"; return; }
    while [ "$(now)" -lt "$end" ]; do
        i=$((i + 1))
        cat >"$W/s$i.yaml" <<YAML
version: 1
sweep: full$i
base_model: ./m
lanes:
  - id: a
    stages:
      - exec: {produces: metrics, run: "printf '{\\"v\\": $i}' > {metrics}"}
YAML
        full=$(rnd 2)
        [ "$full" = 1 ] && dd if=/dev/zero of="$H/fill" bs=64k >/dev/null 2>&1
        tried=$((tried + 1))
        id=""
        id=$(ctl submit "$W/s$i.yaml" 2>"$W/err") && echo "$id" >>"$W/acked"
        echo "round $i full=$full id=$id $(head -c 200 "$W/err")" >>"$W/trace"
        # Once more while still full: never "already submitted" for a sweep that is not there.
        # (an id printed now is an acknowledgement like any other: it must be there at the end)
        if [ "$full" = 1 ] && [ -z "$id" ]; then
            tried=$((tried + 1))
            id2=$(ctl submit "$W/s$i.yaml" 2>"$W/err2") && echo "$id2" >>"$W/acked"
            echo "round $i again id=$id2 $(head -c 200 "$W/err2")" >>"$W/trace"
        fi
        rm -f "$H/fill"
        alive || { crashed=$((crashed + 1)); log "diskfull: exaqd died unasked"; start --slots 1 || break; }
        [ "$(rnd 4)" = 0 ] && { echo "round $i kill -9" >>"$W/trace"; kill9; start --slots 1 || { crashed=$((crashed + 1)); break; }; }
    done
    alive && kill9
    start --slots 1 || crashed=$((crashed + 1))
    lost=0 dup=0
    ctl status --json >"$W/st.json" 2>/dev/null || echo '{"sweeps": []}' >"$W/st.json"
    for id in $(sort -u "$W/acked"); do
        n=$(jq --arg id "$id" '[.sweeps[] | select(.id == $id)] | length' "$W/st.json")
        [ "$n" = 0 ] && { lost=$((lost + 1)); log "diskfull: acknowledged sweep $id is gone"; }
        [ "$n" -gt 1 ] && dup=$((dup + 1))
    done
    nack=$(sort -u "$W/acked" | grep -c .)
    alive || crashed=$((crashed + 1))
    stop_home "$H"
    cp "$H/exaqd.log" "$W/" 2>/dev/null
    sleep 0.3
    umount "$H" 2>/dev/null && MOUNTED=""
    row diskfull "$tried" $((tried - lost - dup)) "$lost" "$dup" "$crashed" "$nack acknowledged"
}

# ===== slow and non-reading clients ============================================================
scenario_slow() { # SECONDS
    end=$(($(now) + $1))
    tried=0 surv=0 crashed=0
    [ -x "$TBIN/integ/test_slow_client" ] || { row slowclient 0 0 0 0 0 "skipped: build $TBIN/integ/test_slow_client"; return; }
    while [ "$(now)" -lt "$end" ] || [ $tried = 0 ]; do
        tried=$((tried + 1))
        if EXAQ_BIN=$BIN timeout 120 "$TBIN/integ/test_slow_client" >"$T/slow.log" 2>&1; then
            surv=$((surv + 1))
        else
            crashed=$((crashed + 1))
            tail -n 20 "$T/slow.log" >&2
        fi
    done
    row slowclient "$tried" "$surv" 0 0 "$crashed"
}

# ===== malformed inputs ========================================================================
malformed_cases() { # DIR: writes case files (lanes files) into DIR/cases
    D=$1
    mkdir -p "$D/cases"
    n=0
    lanes_on() { # MODELDIR
        n=$((n + 1))
        printf 'version: 1\nsweep: bad%s\nbase_model: %s\nlanes:\n  - id: a\n    stages:\n      - exec: {produces: metrics, run: "true"}\n' "$n" "$1" >"$D/cases/$n.yaml"
    }
    raw() { n=$((n + 1)); cat >"$D/cases/$n.yaml"; }
    fake_model "$D/fifo" && mkfifo "$D/fifo/model.safetensors" && lanes_on "$D/fifo"
    fake_model "$D/fifocfg" && rm "$D/fifocfg/config.json" && mkfifo "$D/fifocfg/config.json" && lanes_on "$D/fifocfg"
    fake_model "$D/zero" && ln -s /dev/zero "$D/zero/w.bin" && lanes_on "$D/zero"
    fake_model "$D/null" && ln -s /dev/null "$D/null/w.bin" && lanes_on "$D/null"
    fake_model "$D/loop" && ln -s . "$D/loop/a" && lanes_on "$D/loop"
    fake_model "$D/uploop" && mkdir -p "$D/uploop/x" && ln -s .. "$D/uploop/x/up" && lanes_on "$D/uploop"
    fake_model "$D/self" && ln -s s "$D/self/s" && lanes_on "$D/self"
    fake_model "$D/dangle" && ln -s /nonexistent/x "$D/dangle/x" && lanes_on "$D/dangle"
    fake_model "$D/dirlink" && ln -s /etc "$D/dirlink/etc" && lanes_on "$D/dirlink"
    fake_model "$D/deep" && p="$D/deep" && for k in $(seq 1 40); do p="$p/d"; done && mkdir -p "$p" && : >"$p/f" && lanes_on "$D/deep"
    lanes_on "$D/missing"
    lanes_on /dev/zero
    lanes_on "$D/fifo/model.safetensors"
    : | raw
    head -c 4096 /dev/urandom | raw
    printf 'version: 1\nsweep: x\nbase_model: ./m\nlanes: %s\n' "$(printf '%.0s[' $(seq 1 3000))" | raw
    printf 'version: 1\nsweep: x\nbase_model: ./m\npriority: 99999999999999999999\nlanes: []\n' | raw
    printf 'version: 1\nsweep: x\nbase_model: ./m\ndefaults: {retries: 1e400}\nlanes: []\n' | raw
    printf 'version: 1\nsweep: x\nbase_model: ./m\nlanes:\n  - id: a\n    stages:\n      - config: {vocab_size: .nan}\n' | raw
    printf 'a: &a ["x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e]\n' | raw
    printf 'version: 1\nversion: 1\nsweep: x\nbase_model: ./m\nlanes: []\n' | raw
    printf 'version: 1\nsweep: x\n\tbase_model: ./m\nlanes: []\n' | raw
    printf 'version: 1\nsweep: %s\nbase_model: ./m\nlanes: []\n' "$(head -c 1000000 /dev/zero | tr '\0' x)" | raw
    printf 'version: 1\nsweep: "x\\u0000y"\nbase_model: ./m\nlanes: []\n' | raw
    printf 'version: 1\nsweep: x\nbase_model: ./m\nlanes:\n  - id: a\n    stages:\n      - quantize: {method: gptq, bits: -4}\n' | raw
    printf 'version: 1\nsweep: x\nbase_model: ./m\nlanes:\n  - id: a\n    stages: {}\n' | raw
    printf 'version: 1\nsweep: x\nbase_model: ./m\nlanes:\n  - id: a\n    stages:\n      - exec: {produces: both, run: "true", timeout_min: -1}\n' | raw
    printf '%s' "$(printf '%.0s- ' $(seq 1 5000))" | raw
    fake_model "$D/m"
}

scenario_malformed() { # SECONDS
    end=$(($(now) + $1))
    H=$T/h-malformed
    W=$T/w-malformed
    mkdir -p "$W"
    malformed_cases "$W"
    tried=0 surv=0 crashed=0
    start --slots 1 || { row malformed 0 0 0 0 1 "exaqd did not start"; return; }
    pid=$(cat "$H/exaqd.pid")
    round=0
    while [ "$(now)" -lt "$end" ] || [ $round = 0 ]; do
        round=$((round + 1))
        for f in "$W"/cases/*.yaml; do
            tried=$((tried + 1))
            timeout 30 "$BIN/exaqctl" --home "$H" submit "$f" >"$W/out" 2>&1
            rc=$?
            if [ $rc = 124 ] || [ $rc = 2 ] || ! kill -0 "$pid" 2>/dev/null ||
                ! timeout 10 "$BIN/exaqctl" --home "$H" ping >/dev/null 2>&1; then
                crashed=$((crashed + 1))
                log "malformed: $(basename "$f") (exit $rc) left exaqd hung or dead: $(head -c 300 "$W/out")"
                alive || start --slots 1 || break
                pid=$(cat "$H/exaqd.pid")
            else
                surv=$((surv + 1))
            fi
        done
        if [ -x "$TBIN/integ/test_proto_robust" ]; then
            tried=$((tried + 1))
            if EXAQ_BIN=$BIN timeout 120 "$TBIN/integ/test_proto_robust" >"$W/proto.log" 2>&1; then
                surv=$((surv + 1))
            else
                crashed=$((crashed + 1))
                tail -n 20 "$W/proto.log" >&2
            fi
        fi
        [ "$(now)" -ge "$end" ] && break
    done
    kill -0 "$pid" 2>/dev/null || crashed=$((crashed + 1))
    stop_home "$H"
    row malformed "$tried" "$surv" 0 0 "$crashed" "$(ls "$W"/cases | wc -l) cases x $round rounds"
}

only=${EXAQ_TORTURE_ONLY:-kill9 diskfull slowclient malformed}
want() { case " $only " in *" $1 "*) return 0 ;; esac; return 1; }
t0=$(now)
log "running for about ${TOTAL}s (EXAQ_TORTURE_S): $only"
want kill9 && scenario_kill9 $((TOTAL * 45 / 100))
want diskfull && scenario_diskfull $((TOTAL * 15 / 100))
want slowclient && scenario_slow $((TOTAL * 15 / 100))
left=$((TOTAL - ($(now) - t0)))
want malformed && scenario_malformed $((left > 20 ? left - 10 : 10))

printf '\n%-11s %6s %9s %5s %11s %8s  %s\n' scenario tried survived lost duplicated crashed note
bad=0
while read -r name tried surv lost dup crashed note; do
    printf '%-11s %6s %9s %5s %11s %8s  %s\n' "$name" "$tried" "$surv" "$lost" "$dup" "$crashed" "$note"
    [ "$lost" = 0 ] && [ "$dup" = 0 ] && [ "$crashed" = 0 ] || bad=1
done <"$ROWS"
printf 'total time %ss\n' $(($(now) - t0))
exit $bad
