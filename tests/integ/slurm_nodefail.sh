# Slurm node failure: the node of a running job is marked down (scontrol), the job ends
# NODE_FAIL, and exaqd submits the stage again without using a retry (retries: 0 here), so the
# lane still completes. Jobs are submitted with --no-requeue, so Slurm does not rerun it itself.
. "$(dirname "$0")/lib.sh"
if ! sh "$SRC/tests/slurm/up.sh" >"$T/up.log" 2>&1; then
    echo "SKIP: no Slurm cluster: $(tail -1 "$T/up.log")"
    exit 77
fi
export EXAQ_SLURM_POLL_S=0.5
node=$(sinfo -h -N -o %N | head -1)
cancel_ours() {
    squeue -h -o '%i %Z' 2>/dev/null | awk -v h="$EXAQ_HOME" '$2 == h { print $1 }' |
        xargs -r scancel 2>/dev/null || true
    scontrol update nodename="$node" state=resume 2>/dev/null || true
}
trap 'rc=$?; cancel_ours; (exit $rc); cleanup' EXIT
trap 'cancel_ours; cleanup' INT TERM
start_daemon --slots 1
cat >"$T/nf.yaml" <<YAML
version: 1
sweep: nodefail
base_model: $SRC/tests/data/tiny-exaone4
defaults: {executor: slurm, gpus: 0, retries: 0}
lanes:
  - id: a
    stages: [{exec: {run: 'sleep 4; echo "{\"n\": 1}" >"\$EXAQ_METRICS"', produces: metrics}}]
YAML
expect_rc 0 ctl submit "$T/nf.yaml"
S=$(cat "$OUT")
st() { status_json "$S" | jq -r ".sweeps[0].lanes[] | select(.id == \"a\") | .stages[0]$1"; }
running() { [ "$(st '.slurm.state // empty')" = RUNNING ]; }
wait_for 20 running || fail "the job does not run: $(st '')"
job=$(st .slurm.job_id)
scontrol update nodename="$node" state=down reason=exaq-test || fail "cannot mark the node down"
ended() { squeue -h -a -t all -j "$job" -o %T 2>/dev/null | grep -q NODE_FAIL; }
wait_for 20 ended || fail "job $job is not NODE_FAIL: $(squeue -h -a -t all -j "$job" -o %T)"
scontrol update nodename="$node" state=resume 2>/dev/null || true
expect_rc 0 ctl wait "$S" --timeout 60
status_json "$S" >"$T/st.json"
jq -e '.sweeps[0].lanes[] | select(.id == "a") | .state == "done"' "$T/st.json" >/dev/null ||
    fail "lane not done after the node failure: $(jq -c '.sweeps[0].lanes' "$T/st.json")"
jq -e '.sweeps[0].lanes[] | select(.id == "a") | .stages[0] |
       .attempts == 2 and .tries == 0 and .history[0].class == "interrupted" and
       (.history[0].msg | test("NODE_FAIL"))' "$T/st.json" >/dev/null ||
    fail "history: $(jq -c '.sweeps[0].lanes[] | select(.id == "a") | .stages[0] | {attempts, tries, history}' "$T/st.json")"
echo "slurm_nodefail: all checks passed"
