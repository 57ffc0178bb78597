# Acceptance: kill -9 of exaqd mid-sweep, then a restart: the sweep completes, no finished stage
# runs twice and no finished result is lost. kill -9 of a worker fails that attempt as `lost`,
# the stage is retried and the daemon stays up. Losing the database entirely does not make
# finished stages run again either (the worker adopts artifacts/<key>/result.json).
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
fake_model "$T/w/base"
cat >"$T/w/lanes.yaml" <<'YAML'
version: 1
sweep: crash
base_model: ./base
defaults: {retries: 1}
lanes:
  - id: l1
    stages:
      - exec: {produces: both, run: "echo start-l1 >> runs; sleep 0.5; cp -R {input}/. {output}/; echo end-l1 >> runs; printf '{\"v\": 1}' > {metrics}"}
  - id: l2
    stages:
      - exec: {produces: both, run: "echo start-l2 >> runs; sleep 3.01; cp -R {input}/. {output}/; echo end-l2 >> runs; printf '{\"v\": 2}' > {metrics}"}
  - id: l3
    stages:
      - exec: {produces: both, run: "echo start-l3 >> runs; cp -R {input}/. {output}/; echo end-l3 >> runs; printf '{\"v\": 3}' > {metrics}"}
YAML
count() { grep -c "^$1\$" "$T/w/runs" || true; }

start_daemon --slots 1
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
# Wait until l1 is done and l2 is running, then kill the daemon.
l2_running() {
    status_json "$S" | jq -e '(.sweeps[0].lanes[] | select(.id == "l1") | .state) == "done" and
        (.sweeps[0].lanes[] | select(.id == "l2") | .stages[0].state) == "running"'
}
wait_for 30 l2_running || fail "l2 never ran"
wait_for 5 grep -q start-l2 "$T/w/runs" || fail "l2's command did not start"
k1=$(status_json "$S" | jq -r '.sweeps[0].lanes[] | select(.id == "l1") | .stages[0].key')
cp "$EXAQ_HOME/artifacts/$k1/result.json" "$T/l1.result"
old_pid=$(daemon_pid)
kill9_daemon
# The orphaned worker and l2's command go away by themselves.
wait_for 10 no_proc "exaq-worker serve --home $EXAQ_HOME" || fail "worker outlived exaqd"
wait_for 10 no_proc 'sleep 3.01' || fail "the stage command outlived its worker"

start_daemon --slots 1
[ "$(daemon_pid)" != "$old_pid" ] || fail "exaqd did not restart"
expect_rc 0 ctl wait "$S" --timeout 60
status_json "$S" >"$T/st.json"
jq -e '[.sweeps[0].lanes[].state] | all(. == "done")' "$T/st.json" >/dev/null ||
    fail "sweep did not complete after the restart"
[ "$(count start-l1)" -eq 1 ] && [ "$(count end-l1)" -eq 1 ] || fail "l1 ran again after the crash"
[ "$(count start-l2)" -eq 2 ] && [ "$(count end-l2)" -eq 1 ] || fail "l2 was not re-run exactly once"
[ "$(count end-l3)" -eq 1 ] || fail "l3 did not run once"
cmp -s "$T/l1.result" "$EXAQ_HOME/artifacts/$k1/result.json" || fail "l1's result changed"
jq -e '.sweeps[0].lanes[] | select(.id == "l1") | .stages[0].metrics.v == 1' "$T/st.json" >/dev/null ||
    fail "l1's metrics were lost"
jq -e '.sweeps[0].lanes[] | select(.id == "l2") | .stages[0].history | map(.state) ==
       ["interrupted", "done"]' "$T/st.json" >/dev/null ||
    fail "l2 history: $(jq -c '.sweeps[0].lanes[] | select(.id == "l2") | .stages[0].history' "$T/st.json")"
ls "$EXAQ_HOME/artifacts" | grep -q tmp && fail "a temporary artifact dir was left behind"

# kill -9 of a worker: the attempt fails as lost, the stage is retried, exaqd stays up.
sed -e 's/^sweep: crash/sweep: crash2/' -e 's/sleep 3.01/sleep 2.02/' "$T/w/lanes.yaml" >"$T/w/lanes2.yaml"
expect_rc 0 ctl submit "$T/w/lanes2.yaml"
S2=$(cat "$OUT")
pid=$(daemon_pid)
l2b_running() {
    status_json "$S2" | jq -e '(.sweeps[0].lanes[] | select(.id == "l2") | .stages[0].state) == "running"'
}
wait_for 30 l2b_running || fail "l2 of the second sweep never ran"
wait_for 5 pgrep -f 'sleep 2.02' || fail "the command did not start"
wpid=$(status_json | jq '.daemon.slots[0].pid')
kill -9 "$wpid"
expect_rc 0 ctl wait "$S2" --timeout 60
[ "$(daemon_pid)" = "$pid" ] && kill -0 "$pid" || fail "exaqd died with its worker"
expect_rc 0 ctl ping
status_json "$S2" >"$T/st2.json"
jq -e '.sweeps[0].lanes[] | select(.id == "l2") | .stages[0] |
       .state == "done" and .history[0].class == "lost" and .history[1].state == "done"' \
    "$T/st2.json" >/dev/null ||
    fail "worker kill: $(jq -c '.sweeps[0].lanes[] | select(.id == "l2") | .stages[0]' "$T/st2.json")"
wait_for 10 no_proc 'sleep 2.02' || fail "the killed worker's command survived"
newpid=$(status_json | jq '.daemon.slots[0].pid')
[ "$newpid" != "$wpid" ] || fail "no new worker was spawned"

# Losing the database: finished results in artifacts/ are adopted, not recomputed.
expect_rc 0 ctl shutdown
wait_for 10 gone "$pid" || fail "exaqd did not stop"
rm -f "$EXAQ_HOME"/exaq.db*
cp "$T/w/runs" "$T/runs.before"
start_daemon --slots 1
expect_rc 0 ctl submit "$T/w/lanes.yaml"
expect_rc 0 ctl wait "$(cat "$OUT")" --timeout 60
cmp -s "$T/w/runs" "$T/runs.before" || fail "finished stages ran again after losing the database"
status_json >"$T/st3.json"
jq -e '[.sweeps[0].lanes[].stages[].metrics.v] | sort == [1, 2, 3]' "$T/st3.json" >/dev/null ||
    fail "adopted metrics: $(jq -c '[.sweeps[0].lanes[].stages[].metrics]' "$T/st3.json")"
echo "crash ok"
