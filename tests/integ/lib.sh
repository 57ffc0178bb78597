# Shared helpers for the integration tests: a real exaqd in a temporary home, driven by exaqctl.
# Source it from a test script; it sets -eu, creates $T (removed at exit with the daemon
# stopped), and exports EXAQ_HOME so exaqd and exaqctl need no --home.
#
#   start_daemon [ARGS]      start exaqd (daemonized) and wait until it answers
#   ctl ARGS                 run exaqctl
#   expect_rc N CMD...       run CMD, fail unless it exits with N (output kept in $OUT/$ERR)
#   fail MSG                 print MSG and exit 1
#   kill9_daemon             kill -9 exaqd (workers notice and exit)
#   wait_for SECS CMD...     retry CMD every 0.1 s until it succeeds
#   $SANITIZED               1 under `make check` (EXAQ_SANITIZED=1: ASan or TSan binaries, 5-20x
#                            slower): the compute-heavy tests shrink their data and keep the
#                            checks that do not depend on the amount of data
set -eu
BIN=${EXAQ_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/build/release/bin}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
T=$(mktemp -d /tmp/exaq-test.XXXXXX)
export EXAQ_HOME=$T/home
export EXAQ_HEARTBEAT_S=${EXAQ_HEARTBEAT_S:-0.5}
export EXAQ_HEARTBEAT_GRACE_S=${EXAQ_HEARTBEAT_GRACE_S:-10}
export EXAQ_KILL_GRACE_S=${EXAQ_KILL_GRACE_S:-5}
OUT=$T/out
ERR=$T/err
SANITIZED=${EXAQ_SANITIZED:-0}
if [ -n "${EXAQ_TSAN:-}" ]; then
    # Debian's libuv closes descriptors with a raw close syscall that TSan cannot see, so it
    # may pair an accept4 or epoll_ctl on the loop with a later closedir on the thread pool
    # once the descriptor number is reused: suppressed.
    printf 'race:accept4\nrace:epoll_ctl\n' >"$T/tsan.supp"
    # log_path: exaqd detaches from the terminal, so its reports go to files fail() prints.
    export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$T/tsan.supp log_path=$T/tsan-report"
fi

fail() {
    echo "FAIL: $*" >&2
    if [ -f "$EXAQ_HOME/exaqd.log" ]; then
        echo "--- exaqd.log (last 40 lines) ---" >&2
        tail -n 40 "$EXAQ_HOME/exaqd.log" >&2
    fi
    for f in "$T"/tsan-report.*; do
        [ -f "$f" ] || continue
        echo "--- $f ---" >&2
        head -n 80 "$f" >&2
    done
    exit 1
}

cleanup() {
    rc=$?
    if [ -f "$EXAQ_HOME/exaqd.pid" ]; then
        pid=$(cat "$EXAQ_HOME/exaqd.pid" 2>/dev/null || true)
        [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    fi
    pkill -9 -f "exaq-worker serve --home $EXAQ_HOME" 2>/dev/null || true
    if [ $rc -ne 0 ] && [ -d "$EXAQ_HOME/workers" ]; then
        tail -n 20 "$EXAQ_HOME"/workers/*.log >&2 2>/dev/null || true
    fi
    if [ $rc -ne 0 ] && [ -n "${EXAQ_KEEP:-}" ]; then
        echo "kept $T" >&2
    else
        rm -rf "$T"
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

ctl() {
    "$BIN/exaqctl" "$@"
}

wait_for() {
    secs=$1
    shift
    n=$((secs * 10))
    while [ $n -gt 0 ]; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}

start_daemon() {
    "$BIN/exaqd" "$@" >"$T/exaqd.start" 2>&1 || fail "exaqd did not start: $(cat "$T/exaqd.start")"
    wait_for 10 ctl ping || fail "exaqd does not answer"
}

# gone PID: the process has exited (a zombie counts as gone: its parent may reap it late).
gone() {
    ! kill -0 "$1" 2>/dev/null || grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}

# no_proc PATTERN: no process command line matches PATTERN (pgrep -f).
no_proc() {
    ! pgrep -f "$1" >/dev/null
}

daemon_pid() {
    cat "$EXAQ_HOME/exaqd.pid"
}

kill9_daemon() {
    pid=$(daemon_pid)
    kill -9 "$pid"
    # The workers notice the closed socket and exit by themselves.
    n=100
    while ! gone "$pid" && [ $n -gt 0 ]; do sleep 0.05; n=$((n - 1)); done
}

expect_rc() {
    want=$1
    shift
    set +e
    "$@" >"$OUT" 2>"$ERR"
    got=$?
    set -e
    if [ "$got" != "$want" ]; then
        echo "--- stdout" >&2; cat "$OUT" >&2
        echo "--- stderr" >&2; cat "$ERR" >&2
        fail "'$*' exited $got, expected $want"
    fi
}

# status_json [SWEEP]: the status document
status_json() {
    ctl status ${1:+"$1"} --json
}

# sweep_done LANES TIMEOUT: submits LANES, waits up to TIMEOUT seconds, writes the status to
# $T/st.json and fails unless every lane is done (naming each lane's state and errors). Sets
# SWEEP to the sweep's id.
sweep_done() {
    expect_rc 0 ctl submit "$1"
    SWEEP=$(cat "$OUT")
    expect_rc 0 ctl wait "$SWEEP" --timeout "$2"
    status_json "$SWEEP" >"$T/st.json"
    jq -e '[.sweeps[0].lanes[].state] | all(. == "done")' "$T/st.json" >/dev/null ||
        fail "not every lane is done: $(jq -c '[.sweeps[0].lanes[] | {id, state, err: [.stages[].error]}]' "$T/st.json")"
}

# Writes a minimal base model dir (config.json only) at $1.
fake_model() {
    mkdir -p "$1"
    printf '{"model_type": "exaone4"}\n' >"$1/config.json"
}
