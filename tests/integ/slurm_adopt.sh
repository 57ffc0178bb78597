# Slurm crash windows: exaqd is killed (-9) by an sbatch wrapper right after the job was
# submitted but before its id was recorded, then right before sbatch ran. The restarted exaqd
# finds the first job by its recorded name (no second submit) and submits the second attempt,
# which Slurm never saw, again under a new attempt: one Slurm job per stage either way.
. "$(dirname "$0")/lib.sh"
if ! sh "$SRC/tests/slurm/up.sh" >"$T/up.log" 2>&1; then
    echo "SKIP: no Slurm cluster: $(tail -1 "$T/up.log")"
    exit 77
fi
export EXAQ_SLURM_POLL_S=0.5
cancel_ours() {
    squeue -h -o '%i %Z' 2>/dev/null | awk -v h="$EXAQ_HOME" '$2 == h { print $1 }' |
        xargs -r scancel 2>/dev/null || true
}
trap 'rc=$?; cancel_ours; (exit $rc); cleanup' EXIT
trap 'cancel_ours; cleanup' INT TERM
real=$(command -v sbatch)
mkdir -p "$T/wrap"
cat >"$T/wrap/sbatch" <<SH
#!/bin/sh
case "\$(cat "$T/wrap/mode" 2>/dev/null)" in
after) out=\$("$real" "\$@") || exit 1; echo "\$out" >"$T/wrap/submitted"; kill -9 \$PPID; echo "\$out" ;;
before) kill -9 \$PPID; exit 1 ;;
*) exec "$real" "\$@" ;;
esac
SH
chmod +x "$T/wrap/sbatch"
jobs_for() { squeue -h -a -t all -o '%i %j %Z' | awk -v h="$EXAQ_HOME" -v k="-$(echo "$1" | cut -c1-12)" '$3 == h && index($2, k) { print $1 }'; }

sweep() {
    cat >"$T/$1.yaml" <<YAML
version: 1
sweep: $1
base_model: $SRC/tests/data/tiny-exaone4
defaults: {executor: slurm, gpus: 0, retries: 0}
lanes:
  - id: a
    stages: [{exec: {run: 'sleep 1; echo "{\"n\": 1, \"$1\": 1}" >"\$EXAQ_METRICS"', produces: metrics}}]
YAML
}

for mode in after before; do
    echo "$mode" >"$T/wrap/mode"
    PATH="$T/wrap:$PATH" start_daemon --slots 1
    pid=$(daemon_pid)
    sweep "win-$mode"
    expect_rc 0 ctl submit "$T/win-$mode.yaml"
    S=$(cat "$OUT")
    wait_for 20 gone "$pid" || fail "$mode: the sbatch wrapper did not kill exaqd"
    echo normal >"$T/wrap/mode"
    start_daemon --slots 1
    expect_rc 0 ctl wait "$S" --timeout 60
    status_json "$S" >"$T/st.json"
    key=$(jq -r '.sweeps[0].lanes[] | select(.id == "a") | .stages[0].key' "$T/st.json")
    jq -e '.sweeps[0].lanes[] | select(.id == "a") | .state == "done"' "$T/st.json" >/dev/null ||
        fail "$mode: lane not done: $(jq -c '.sweeps[0].lanes' "$T/st.json")"
    n=$(jobs_for "$key" | wc -l)
    [ "$n" = 1 ] || fail "$mode: $n slurm jobs for the stage: $(jobs_for "$key" | tr '\n' ' ')"
    att=$(jq '.sweeps[0].lanes[] | select(.id == "a") | .stages[0].attempts' "$T/st.json")
    if [ "$mode" = after ]; then
        [ "$att" = 1 ] || fail "after: $att attempts; the job submitted before the crash was not adopted"
        [ "$(jobs_for "$key")" = "$(cut -d';' -f1 "$T/wrap/submitted")" ] || fail "after: another job ran"
        grep -q "found slurm job .* by its name" "$EXAQ_HOME/exaqd.log" || fail "after: not found by name"
    else
        [ "$att" = 2 ] || fail "before: $att attempts, expected the lost one and its resubmission"
        jq -e '.sweeps[0].lanes[] | select(.id == "a") | .stages[0].history[0].class == "interrupted"' \
            "$T/st.json" >/dev/null || fail "before: the first attempt is not interrupted"
    fi
    pid=$(daemon_pid)
    expect_rc 0 ctl shutdown
    wait_for 10 gone "$pid" || fail "exaqd did not stop"
done
echo "slurm_adopt: all checks passed"
