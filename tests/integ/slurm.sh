# Acceptance (Slurm): on a real single-node cluster (tests/slurm/up.sh), a 12-lane exec sweep
# plus a native quantize lane with executor: slurm completes with every stage inside a Slurm
# job; kill -9 of exaqd three times during it submits no stage twice and re-runs nothing;
# scancel from outside fails a stage with class cancelled and retry runs it again; a job over
# its time limit fails with class timeout.
. "$(dirname "$0")/lib.sh"
if ! sh "$SRC/tests/slurm/up.sh" >"$T/up.log" 2>&1; then
    echo "SKIP: no Slurm cluster: $(tail -1 "$T/up.log")"
    exit 77
fi
export EXAQ_SLURM_POLL_S=0.5
# At exit, cancel the jobs this home left (a failed check must not leave the node busy).
cancel_ours() {
    squeue -h -o '%i %Z' 2>/dev/null | awk -v h="$EXAQ_HOME" '$2 == h { print $1 }' |
        xargs -r scancel 2>/dev/null || true
}
trap 'rc=$?; cancel_ours; (exit $rc); cleanup' EXIT
trap 'cancel_ours; cleanup' INT TERM
start_daemon --slots 1
t0=$(date +%s)
phase() { echo "slurm: $* ($(($(date +%s) - t0))s)"; }

# A job of ours, by the name exaqd gave it: exaq-<attempt>-<key prefix>.
# Only this home's jobs (their working dir): the cluster keeps records of earlier runs.
jobs_of_sweep() { squeue -h -a -t all -o '%i %j %T %Z' | awk -v h="$EXAQ_HOME" '$4 == h' || true; }

# A job over its time limit: Slurm checks limits about once a minute, so this one starts first
# and is checked last.
cat >"$T/slow.yaml" <<YAML
version: 1
sweep: slurm-slow
base_model: $SRC/tests/data/tiny-exaone4
defaults: {executor: slurm, gpus: 0, retries: 0}
lanes:
  - id: slow
    stages: [{exec: {run: 'sleep 300', produces: metrics, timeout_min: 0.01}}]
YAML
expect_rc 0 ctl submit "$T/slow.yaml"
SLOW=$(cat "$OUT")

cat >"$T/sweep.yaml" <<YAML
version: 1
sweep: slurm-acc
base_model: $SRC/tests/data/tiny-exaone4
defaults: {executor: slurm, gpus: 0, retries: 0}
slurm: {time_min: 5, cpus_per_task: 1}
lanes:
  - id: q
    stages: [{quantize: {method: rtn, scheme: W8A16}}]
  - id: e
    matrix: {exec.env.N: ['1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12']}
    stages:
      - exec:
          run: 'sleep 1; echo "\$SLURM_JOB_ID" >"\$EXAQ_STAGE_DIR/../job-\$EXAQ_KEY"; echo "{\"n\": \$N}" >"\$EXAQ_METRICS"'
          produces: metrics
          env: {N: '0'}
YAML
expect_rc 0 ctl submit "$T/sweep.yaml"
S=$(cat "$OUT")
# kill -9 exaqd three times while the jobs run; each restart re-adopts them.
for k in 1 2 3; do
    sleep 2
    kill9_daemon
    start_daemon --slots 1
done
expect_rc 0 ctl wait "$S" --timeout 150
status_json "$S" >"$T/st.json"
jq -e '[.sweeps[0].lanes[] | select(.id != "baseline") | .state] | length == 13 and all(. == "done")' \
    "$T/st.json" >/dev/null || fail "not every lane is done: $(jq -c '[.sweeps[0].lanes[] | {id, state, e: [.stages[].error]}]' "$T/st.json")"
phase "the sweep completed through three kill -9"
# Every exec stage ran inside a Slurm job.
for key in $(jq -r '.sweeps[0].lanes[] | select(.id | startswith("e")) | .stages[0].key' "$T/st.json"); do
    id=$(cat "$EXAQ_HOME/artifacts/job-$key" 2>/dev/null || true)
    [ -n "$id" ] || fail "stage $key did not see SLURM_JOB_ID"
done
# The native quantize stage wrote its model from inside its job.
qkey=$(jq -r '.sweeps[0].lanes[] | select(.id == "q") | .stages[0].key' "$T/st.json")
[ -f "$EXAQ_HOME/artifacts/$qkey/model/config.json" ] && [ -f "$EXAQ_HOME/artifacts/$qkey/result.json" ] ||
    fail "the quantize stage left no model"
grep -q "exaq: native stage quantize" "$EXAQ_HOME"/logs/"$qkey"/attempt-*.log || fail "no quantize log"
# No stage was submitted twice: one Slurm job per stage key among this sweep's jobs.
jobs_of_sweep >"$T/jobs"
for key in $(jq -r '.sweeps[0].lanes[] | select(.id != "baseline") | .stages[].key' "$T/st.json"); do
    n=$(grep -c -- "-$(echo "$key" | cut -c1-12) " "$T/jobs" || true)
    [ "$n" = 1 ] || fail "stage $key has $n slurm jobs: $(grep -- "$(echo "$key" | cut -c1-12)" "$T/jobs")"
done
jq -e '[.sweeps[0].lanes[] | select(.id != "baseline") | .stages[].attempts] | all(. == 1)' \
    "$T/st.json" >/dev/null || fail "a stage ran more than once: $(jq -c '[.sweeps[0].lanes[].stages[] | {key, attempts}]' "$T/st.json")"

# scancel from outside: class cancelled; retry runs it again. A time limit: class timeout.
cat >"$T/cancel.yaml" <<YAML
version: 1
sweep: slurm-cancel
base_model: $SRC/tests/data/tiny-exaone4
defaults: {executor: slurm, gpus: 0, retries: 0}
lanes:
  - id: long
    stages: [{exec: {run: 'sleep 6; echo "{\"ok\": 1}" >"\$EXAQ_METRICS"', produces: metrics}}]
YAML
expect_rc 0 ctl submit "$T/cancel.yaml"
C=$(cat "$OUT")
job_of() { status_json "$C" | jq -r --arg l "$1" '.sweeps[0].lanes[] | select(.id == $l) | .stages[0].slurm.job_id // empty'; }
running() { [ "$(status_json "$C" | jq -r --arg l "$1" '.sweeps[0].lanes[] | select(.id == $l) | .stages[0].slurm.state // empty')" = RUNNING ]; }
wait_for 20 running long || fail "the long job is not running: $(status_json "$C" | jq -c .sweeps[0].lanes)"
expect_rc 0 ctl status "$C"
grep -q "slurm job $(job_of long)" "$OUT" || fail "status does not show the slurm job: $(cat "$OUT")"
phase "the long job runs"
scancel "$(job_of long)"
lane_err() { status_json "$C" | jq -r --arg l "$1" '.sweeps[0].lanes[] | select(.id == $l) | .stages[0].error.class // empty'; }
is_cancelled() { [ "$(lane_err long)" = cancelled ]; }
wait_for 20 is_cancelled || fail "scancel: class '$(lane_err long)'"
phase "scancel: cancelled"
expect_rc 0 ctl retry "$C" long
is_done() { [ "$(status_json "$C" | jq -r '.sweeps[0].lanes[] | select(.id == "long") | .state')" = done ]; }
wait_for 60 is_done || fail "retry did not run the cancelled stage"
phase "retry: done"
slow_err() { status_json "$SLOW" | jq -r '.sweeps[0].lanes[] | select(.id == "slow") | .stages[0].error.class // empty'; }
is_timeout() { [ "$(slow_err)" = timeout ]; }
wait_for 100 is_timeout || fail "time limit: class '$(slow_err)'"
phase "time limit: timeout"
echo "slurm: all checks passed"
