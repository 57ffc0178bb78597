# Scheduling: a higher-priority sweep jumps the queue; a worker that stops heartbeating (SIGSTOP)
# is killed after the grace period and its attempt fails as lost and is retried; min_free_gb
# fails a stage with a clear message; shutdown --drain lets the running stage finish, starts
# nothing new, and the next exaqd resumes the sweep.
export EXAQ_HEARTBEAT_S=0.2
export EXAQ_HEARTBEAT_GRACE_S=2
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
fake_model "$T/w/base"
lane() { # lane ID CMD
    printf '  - {id: %s, stages: [{exec: {run: "%s; cp -R {input}/. {output}/"}}]}\n' "$1" "$2"
}
{
    printf 'version: 1\nsweep: low\nbase_model: ./base\ndefaults: {retries: 1}\nlanes:\n'
    for i in 1 2 3; do lane "a$i" "echo a$i >> order; sleep 0.6"; done
} >"$T/w/low.yaml"
{
    printf 'version: 1\nsweep: high\nbase_model: ./base\nlanes:\n'
    lane b "echo b >> order"
} >"$T/w/high.yaml"
start_daemon --slots 1
expect_rc 0 ctl submit "$T/w/low.yaml"
A=$(cat "$OUT")
wait_for 10 grep -q a1 "$T/w/order" || fail "a1 did not start"
expect_rc 0 ctl submit --priority 5 "$T/w/high.yaml"
B=$(cat "$OUT")
expect_rc 0 ctl wait "$A" --timeout 60
expect_rc 0 ctl wait "$B" --timeout 60
[ "$(tr '\n' ' ' <"$T/w/order")" = "a1 b a2 a3 " ] ||
    fail "priority order: $(tr '\n' ' ' <"$T/w/order"), want a1 b a2 a3"

# A stopped worker: killed after the grace, the attempt is lost and retried, exaqd stays up.
{
    printf 'version: 1\nsweep: stopped\nbase_model: ./base\ndefaults: {retries: 1}\nlanes:\n'
    lane s "echo s >> stopped.runs; sleep 1"
} >"$T/w/stopped.yaml"
expect_rc 0 ctl submit "$T/w/stopped.yaml"
C=$(cat "$OUT")
wait_for 10 grep -q s "$T/w/stopped.runs" || fail "the stage did not start"
wpid=$(status_json | jq '.daemon.slots[0].pid')
kill -STOP "$wpid"
expect_rc 0 ctl wait "$C" --timeout 60
gone "$wpid" || { kill -CONT "$wpid" 2>/dev/null; fail "the silent worker was not killed"; }
status_json "$C" >"$T/st.json"
jq -e '.sweeps[0].lanes[] | select(.id == "s") | .stages[0] |
       .state == "done" and .history[0].class == "lost" and
       (.history[0].msg | test("signal 9"))' "$T/st.json" >/dev/null ||
    fail "silent worker: $(jq -c '.sweeps[0].lanes[] | select(.id == "s") | .stages[0].history' "$T/st.json")"
grep -q "silent for" "$EXAQ_HOME/exaqd.log" || fail "the log does not say why the worker was killed"

# min_free_gb larger than any disk.
{
    printf 'version: 1\nsweep: disk\nbase_model: ./base\nlanes:\n'
    printf '  - {id: d, stages: [{exec: {run: "cp -R {input}/. {output}/", min_free_gb: 1000000000}}]}\n'
} >"$T/w/disk.yaml"
expect_rc 0 ctl submit "$T/w/disk.yaml"
D=$(cat "$OUT")
expect_rc 0 ctl wait "$D" --timeout 30
status_json "$D" | jq -e '.sweeps[0].lanes[] | select(.id == "d") | .stages[0].error.msg |
    test("min_free_gb")' >/dev/null || fail "min_free_gb: $(status_json "$D" | jq -c '.sweeps[0].lanes')"

# shutdown --drain: the running stage finishes, the queued ones wait for the next exaqd.
{
    printf 'version: 1\nsweep: drain\nbase_model: ./base\nlanes:\n'
    for i in 1 2; do lane "d$i" "echo d$i >> drain.runs; sleep 1"; done
} >"$T/w/drain.yaml"
expect_rc 0 ctl submit "$T/w/drain.yaml"
E=$(cat "$OUT")
wait_for 10 grep -q d1 "$T/w/drain.runs" || fail "d1 did not start"
pid=$(daemon_pid)
expect_rc 0 ctl shutdown --drain
grep -q "after 1 running stage" "$OUT" || fail "drain output: $(cat "$OUT")"
wait_for 20 gone "$pid" || fail "exaqd did not stop after draining"
[ "$(cat "$T/w/drain.runs" | tr '\n' ' ')" = "d1 " ] || fail "drain started another stage"
start_daemon --slots 1
expect_rc 0 ctl wait "$E" --timeout 60
[ "$(tr '\n' ' ' <"$T/w/drain.runs")" = "d1 d2 " ] || fail "after restart: $(tr '\n' ' ' <"$T/w/drain.runs")"
status_json "$E" | jq -e '.sweeps[0].lanes[] | select(.id == "d1") | .stages[0].history | length == 1' \
    >/dev/null ||
    fail "d1 ran again after the drain"

# logs -f follows a running stage and returns when it ends.
{
    printf 'version: 1\nsweep: follow\nbase_model: ./base\nlanes:\n'
    lane f "for i in 1 2 3 4 5; do echo tick-\$i; sleep 0.3; done"
} >"$T/w/follow.yaml"
expect_rc 0 ctl submit "$T/w/follow.yaml"
F=$(cat "$OUT")
wait_for 10 sh -c "ctl() { \"$BIN/exaqctl\" \"\$@\"; }; ctl logs $F f | grep -q tick-1"
timeout 20 "$BIN/exaqctl" logs "$F" f -f >"$T/follow.out" 2>&1 || fail "logs -f did not end with the stage"
grep -q "tick-5" "$T/follow.out" || fail "logs -f missed later lines: $(cat "$T/follow.out")"
grep -q "exaq: done" "$T/follow.out" || fail "logs -f stopped before the stage ended"
# N slots share the CPUs: each worker runs max(1, ncpu / N) compute threads.
pid=$(daemon_pid)
expect_rc 0 ctl shutdown
wait_for 20 gone "$pid" || fail "exaqd did not stop"
unset EXAQ_THREADS
start_daemon --slots 2
want=$(($(getconf _NPROCESSORS_ONLN) / 2))
[ "$want" -ge 1 ] || want=1
wait_for 20 sh -c "\"$BIN/exaqctl\" status --json | jq -e '[.daemon.slots[].threads] | length == 2 and all(. != null)' >/dev/null" ||
    fail "the workers did not report their threads: $(status_json | jq -c .daemon.slots)"
got=$(status_json | jq -c '[.daemon.slots[].threads]')
[ "$got" = "[$want,$want]" ] || fail "2 slots on $(getconf _NPROCESSORS_ONLN) CPUs: threads $got, want $want each"
echo "sched ok"
