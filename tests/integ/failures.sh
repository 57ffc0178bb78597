# Stage failures: a missing command, a non-zero exit, a timeout, bad metrics, a stage that
# promises a model and writes none, cancel of a running lane, and retry of a failed lane.
# The daemon stays up throughout and wait returns 0 once every lane has ended.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
fake_model "$T/w/base"
cat >"$T/w/lanes.yaml" <<'YAML'
version: 1
sweep: failures
base_model: ./base
defaults: {retries: 1}
lanes:
  - id: ok
    stages:
      - exec: {run: "cp -R {input}/. {output}/"}
  - id: notfound
    stages:
      - exec: {run: "no-such-command-xyz --flag"}
  - id: exit3
    stages:
      - exec: {run: "echo trying >> exit3.runs; echo boom >&2; exit 3", retries: 2}
  - id: timeout
    stages:
      - exec: {run: "echo t >> timeout.runs; sleep 30.3", timeout_min: 0.02}
  - id: badmetrics
    stages:
      - exec: {run: "echo '{\"a\": \"x\"}' > {metrics}", produces: metrics}
  - id: nomodel
    stages:
      - exec: {run: "echo forgot the model"}
  - id: flaky
    stages:
      - exec: {run: "if [ -f flaky.ok ]; then cp -R {input}/. {output}/; else touch flaky.ok; exit 4; fi"}
  - id: slow
    stages:
      - exec: {run: "sleep 40.4; cp -R {input}/. {output}/"}
YAML
start_daemon --slots 3
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
slow_running() {
    status_json "$S" | jq -e '(.sweeps[0].lanes[] | select(.id == "slow") | .stages[0].state) == "running"'
}
wait_for 30 slow_running || fail "slow lane did not start"
wait_for 5 pgrep -f 'sleep 40.4' || fail "slow command not running"
expect_rc 0 ctl cancel "$S" slow
grep -q "cancelled 1 lane" "$OUT" || fail "cancel output: $(cat "$OUT")"
wait_for 15 no_proc 'sleep 40.4' || fail "cancel did not stop the command"
expect_rc 0 ctl wait "$S" --timeout 90
status_json "$S" >"$T/st.json"
st() { jq -r --arg l "$1" ".sweeps[0].lanes[] | select(.id == \$l) | $2" "$T/st.json"; }
[ "$(st ok .state)" = done ] || fail "ok lane: $(st ok .state)"
[ "$(st slow .state)" = cancelled ] || fail "slow lane: $(st slow .state)"
for l in notfound exit3 timeout badmetrics nomodel flaky; do
    [ "$(st $l .state)" = failed ] || fail "lane $l is $(st $l .state), want failed"
done
st notfound '.stages[0].error.msg' | grep -q "command not found" || fail "notfound msg: $(st notfound '.stages[0].error.msg')"
st exit3 '.stages[0].error.msg' | grep -q "status 3: boom" || fail "exit3 msg: $(st exit3 '.stages[0].error.msg')"
[ "$(wc -l <"$T/w/exit3.runs")" -eq 1 ] || fail "an error-class failure was retried"
[ "$(st timeout '.stages[0].error.class')" = timeout ] || fail "timeout class: $(st timeout '.stages[0].error.class')"
[ "$(wc -l <"$T/w/timeout.runs")" -eq 2 ] || fail "timeout was not retried once"
[ "$(st timeout '.stages[0].history | map(.class) | join(",")')" = "timeout,timeout" ] || fail "timeout history"
st badmetrics '.stages[0].error.msg' | grep -q "not a finite number" || fail "badmetrics msg"
st nomodel '.stages[0].error.msg' | grep -q "wrote no model" || fail "nomodel msg"

# retry --failed re-queues failed lanes only; the flaky one now succeeds.
expect_rc 0 ctl retry "$S" flaky --failed
grep -q "re-queued 1 lane" "$OUT" || fail "retry output: $(cat "$OUT")"
expect_rc 0 ctl wait "$S" --timeout 60
[ "$(status_json "$S" | jq -r '.sweeps[0].lanes[] | select(.id == "flaky") | .state')" = done ] ||
    fail "flaky lane did not recover on retry"
[ "$(status_json "$S" | jq -r '.sweeps[0].lanes[] | select(.id == "slow") | .state')" = cancelled ] ||
    fail "retry --failed touched a cancelled lane"
expect_rc 1 ctl retry "$S" nosuchlane
expect_rc 0 ctl ping
echo "failures ok"
