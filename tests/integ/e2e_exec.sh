# Acceptance: the exec example runs end to end through a real exaqd. submit prints the sweep id,
# wait returns 0, status --json shows every lane and stage ended, logs shows each stage's output.
. "$(dirname "$0")/lib.sh"
start_daemon --slots 2

expect_rc 0 ctl submit "$SRC/lanes/examples/exec-demo.yaml"
S=$(cat "$OUT")
echo "$S" | grep -qE '^exec-demo-[0-9a-f]{8}$' || fail "submit printed '$S', not a sweep id"

expect_rc 0 ctl wait "$S" --timeout 120
status_json "$S" >"$T/st.json"
jq -e '.sweeps | length == 1' "$T/st.json" >/dev/null || fail "status lists other sweeps"
jq -e '.sweeps[0].state == "ended"' "$T/st.json" >/dev/null || fail "sweep not ended"
lanes=$(jq -r '.sweeps[0].lanes[].id' "$T/st.json" | sort | tr '\n' ' ')
[ "$lanes" = "baseline copy copy_note slim-env.KEEP=config slim-env.KEEP=tokenizer " ] ||
    fail "unexpected lanes: $lanes"
jq -e '[.sweeps[0].lanes[].state] | all(. == "done")' "$T/st.json" >/dev/null ||
    fail "not every lane is done: $(jq -c "[.sweeps[0].lanes[] | {id, state, err: [.stages[].error]}]" "$T/st.json")"
jq -e '[.sweeps[0].lanes[].stages[].state] | all(. == "done")' "$T/st.json" >/dev/null ||
    fail "not every stage is done"
# The eval list ran on every lane, and its metrics were recorded.
jq -e '[.sweeps[0].lanes[] | .stages[] | select(.name == "eval.exec") | .metrics.size_kb] |
       length == 5 and all(. > 0)' "$T/st.json" >/dev/null || fail "eval metrics missing"
jq -e '.sweeps[0].lanes[] | select(.id == "copy_note") | .stages | map(.name) ==
       ["exec", "exec-2", "eval.exec", "eval.exec-2"]' "$T/st.json" >/dev/null ||
    fail "stage names of copy_note are wrong"
# Model-producing lanes report their size; the slim lanes are smaller than the full copy.
full=$(jq '.sweeps[0].lanes[] | select(.id == "copy") | .size_bytes' "$T/st.json")
slim=$(jq '.sweeps[0].lanes[] | select(.id == "slim-env.KEEP=config") | .size_bytes' "$T/st.json")
[ "$full" -gt 1000000 ] && [ "$slim" -lt 10000 ] || fail "sizes: copy $full, slim $slim"

# logs shows each stage's output, for every lane.
for lane in $(jq -r '.sweeps[0].lanes[].id' "$T/st.json"); do
    expect_rc 0 ctl logs "$S" "$lane"
    for st in $(jq -r --arg l "$lane" '.sweeps[0].lanes[] | select(.id == $l) | .stages[].name' "$T/st.json"); do
        grep -q "^==> $lane/$st " "$OUT" || fail "logs of $lane lack stage $st"
    done
    n=$(jq --arg l "$lane" '.sweeps[0].lanes[] | select(.id == $l) | .stages | length' "$T/st.json")
    [ "$(grep -c '^exaq: done' "$OUT")" -eq "$n" ] || fail "logs of $lane: not every stage says done"
done
ctl logs "$S" copy_note exec-2 | grep -q "exaq: running: cp -R" || fail "logs lack the command"
# The note stage really ran with its env.
note=$(jq -r '.sweeps[0].lanes[] | select(.id == "copy_note") | .stages[1].key' "$T/st.json")
grep -q "edited by the exaq exec demo" "$EXAQ_HOME/artifacts/$note/model/NOTE.txt" ||
    fail "NOTE.txt missing from the artifact"
[ -f "$EXAQ_HOME/artifacts/$note/result.json" ] || fail "result.json missing"
[ -f "$EXAQ_HOME/sweeps/$S/lanes.yaml" ] || fail "the submitted file was not kept"

# Human output and errors.
expect_rc 0 ctl status "$S"
grep -q "copy_note" "$OUT" || fail "status text lacks lanes"
expect_rc 1 ctl logs "$S" nosuchlane
grep -q "has no lane 'nosuchlane'" "$ERR" || fail "unknown lane error: $(cat "$ERR")"
expect_rc 1 ctl status nosuchsweep
expect_rc 1 ctl submit "$T/does-not-exist.yaml"

expect_rc 0 ctl shutdown
pid=$(daemon_pid)
wait_for 10 gone "$pid" || fail "exaqd did not stop"
expect_rc 2 ctl status
grep -q "exaqd --home" "$ERR" || fail "unreachable message lacks the start command"
echo "e2e ok: $S"
