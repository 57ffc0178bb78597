# Finishing survives a crash, and hooks cannot hang it: exaqd is killed with -9 while a sweep's
# on_finish hook runs (the sweep shows "finishing"); the next exaqd finds the sweep ended
# without results and finishes it again (reports, packages, hook). A hook that outlives
# EXAQ_HOOK_TIMEOUT_S is killed with its process group, logged, recorded as failed, and the
# sweep still ends. A hook running at `exaqctl shutdown` is killed and runs again at the next
# start.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
cp -R "$SRC/tests/data/tiny-exaone4" "$T/w/base"
cat >"$T/w/lanes.yaml" <<'YAML'
version: 1
sweep: resume
base_model: ./base
eval:
  - exec: {run: "printf '{\"ppl\": 10, \"time_per_token\": 0.02}' > {metrics}"}
package: {top: 1}
defaults: {retries: 2, timeout_min: 2, gpus: 0}
on_finish: "if [ -f first.ran ]; then echo again >> runs; else touch first.ran; echo first >> runs; exec sleep 30.7; fi"
lanes:
  - id: a
    stages: [{exec: {run: "cp -R {input}/. {output}/"}}]
YAML
start_daemon --slots 1
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
finishing() { status_json "$S" | jq -e '.sweeps[0].state == "finishing"'; }
wait_for 60 finishing || fail "the sweep never showed 'finishing'"
wait_for 10 pgrep -f 'sleep 30.7' || fail "the hook did not start"
# wait keeps waiting while the sweep is finishing.
expect_rc 3 ctl wait "$S" --timeout 1
kill9_daemon
pkill -f 'sleep 30.7' || true
[ -f "$EXAQ_HOME/sweeps/$S/report.md" ] || fail "no report.md before the crash"

# The next exaqd finishes the sweep again: the hook runs a second time and results are recorded.
EXAQ_HOOK_TIMEOUT_S=1 start_daemon --slots 1
expect_rc 0 ctl wait "$S" --timeout 60
[ "$(tr '\n' ' ' <"$T/w/runs")" = "first again " ] || fail "hook runs: $(cat "$T/w/runs")"
expect_rc 0 ctl rank "$S" --json
jq -e '.lanes[0].rank == 1 and .lanes[0].package.top == 1 and .hook.ok' "$OUT" >/dev/null ||
    fail "rank after resume: $(cat "$OUT")"
[ -f "$EXAQ_HOME/sweeps/$S/submissions/submit_top1.zip" ] || fail "no package after resume"
grep -q "finished again\|finishing it again" "$EXAQ_HOME/exaqd.log" || fail "resume not logged"

# A hook that hangs is killed after EXAQ_HOOK_TIMEOUT_S (1 s here), and the sweep ends anyway.
sed -e 's/^sweep: resume/sweep: resume-hang/' \
    -e 's/^on_finish: .*/on_finish: "echo hanging; exec sleep 30.9"/' "$T/w/lanes.yaml" >"$T/w/hang.yaml"
expect_rc 0 ctl submit "$T/w/hang.yaml"
S2=$(cat "$OUT")
expect_rc 0 ctl wait "$S2" --timeout 60
wait_for 5 no_proc 'sleep 30.9' || fail "the hung hook is still running"
grep -q "on_finish killed (timed out after" "$EXAQ_HOME/sweeps/$S2/hooks.log" ||
    fail "hooks.log: $(cat "$EXAQ_HOME/sweeps/$S2/hooks.log")"
expect_rc 0 ctl rank "$S2" --json
jq -e '.hook.ok == false and (.hook.killed | test("timed out"))' "$OUT" >/dev/null ||
    fail "hook outcome: $(jq -c .hook "$OUT")"
# exaqctl shutdown while a hook runs: the hook is killed, exaqd stops promptly, and the next
# exaqd finishes the sweep again.
sed -e 's/^sweep: resume/sweep: resume-stop/' -e 's/first.ran/stop.ran/g' -e 's/>> runs/>> stop.runs/g' \
    -e 's/sleep 30.7/sleep 30.6/' "$T/w/lanes.yaml" >"$T/w/stop.yaml"
expect_rc 0 ctl submit "$T/w/stop.yaml"
S3=$(cat "$OUT")
stop_finishing() { status_json "$S3" | jq -e '.sweeps[0].state == "finishing"'; }
wait_for 60 stop_finishing || fail "resume-stop never showed 'finishing'"
wait_for 10 pgrep -f 'sleep 30.6' || fail "the resume-stop hook did not start"
pid=$(daemon_pid)
expect_rc 0 ctl shutdown
wait_for 15 gone "$pid" || fail "exaqd did not stop while a hook ran"
wait_for 5 no_proc 'sleep 30.6' || fail "shutdown left the hook running"
start_daemon --slots 1
expect_rc 0 ctl wait "$S3" --timeout 60
[ "$(tr '\n' ' ' <"$T/w/stop.runs")" = "first again " ] || fail "stop hook runs: $(cat "$T/w/stop.runs")"
echo "rank_resume ok: $S $S2 $S3"
