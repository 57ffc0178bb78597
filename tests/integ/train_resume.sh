# Acceptance: kill -9 of the worker during a distill stage. exaqd retries the stage, the retry
# logs "resumed from step N" with N > 0 (the checkpoint the first attempt wrote), and its final
# loss is within 1% of an uninterrupted run's. A finished stage leaves no checkpoint behind.
# Takes about 1-2 minutes on 2 shared cores.
. "$(dirname "$0")/lib.sh"
DATA=$SRC/tests/data
if [ ! -f "$DATA/tiny-exaone4/model.safetensors" ] || [ ! -f "$DATA/tiny-a/calib.ids.u32" ]; then
    echo "SKIP tiny-a data missing"
    exit 77
fi
mkdir -p "$T/w"
STEPS=24
[ "$SANITIZED" = 1 ] && STEPS=8
TOK=$((STEPS * 2 * 64))
# $1 sweep name, $2 checkpoint_every. The checkpoint interval is not part of the training: both
# runs take the same steps, but their stage keys differ so the second one is not a cache hit.
lanes() {
    cat <<YAML
version: 1
sweep: $1
base_model: $DATA/tiny-exaone4
calibration: {ids: $DATA/tiny-a/calib.ids.u32, samples: 8, seq_len: 128}
defaults: {retries: 1, gpus: 0}
lanes:
  - id: kd
    stages:
      - prune: {remove: 2}
      - distill: {tokens: $TOK, seq_len: 64, batch: 2, lr: 0.002, warmup: 2, checkpoint_every: $2}
YAML
}
lanes ref 0 >"$T/w/ref.yaml"
lanes killed 2 >"$T/w/killed.yaml"
start_daemon --slots 1
expect_rc 0 ctl submit "$T/w/ref.yaml"
R=$(cat "$OUT")
expect_rc 0 ctl wait "$R" --timeout 900
status_json "$R" >"$T/ref.json"
ref=$(jq -r '.sweeps[0].lanes[] | select(.id == "kd") | .stages[] | select(.name == "distill") | .metrics.train_loss_last' "$T/ref.json")
case "$ref" in '' | null) fail "the reference run has no loss: $(jq -c '.sweeps[0].lanes[] | select(.id == "kd") | .stages' "$T/ref.json")" ;; esac

expect_rc 0 ctl submit "$T/w/killed.yaml"
S=$(cat "$OUT")
# Wait for the first checkpoint past step 2 (the header names the step), then kill the worker.
ck_past() {
    f=$(ls "$EXAQ_HOME"/artifacts/*.train/train.ckpt 2>/dev/null | head -n 1)
    [ -n "$f" ] && head -c 200 "$f" | grep -aq '"step":[1-9][0-9]*' &&
        ! head -c 200 "$f" | grep -aq '"step":2,'
}
wait_for 600 ck_past || fail "no checkpoint was written"
wpid=$(status_json | jq '.daemon.slots[0].pid')
kill -9 "$wpid"
expect_rc 0 ctl wait "$S" --timeout 900
status_json "$S" >"$T/st.json"
jq -e '.sweeps[0].lanes[] | select(.id == "kd") | .stages[] | select(.name == "distill") |
       .state == "done" and .history[0].class == "lost"' "$T/st.json" >/dev/null ||
    fail "distill after the kill: $(jq -c '.sweeps[0].lanes[] | select(.id == "kd") | .stages[] | select(.name == "distill")' "$T/st.json")"
expect_rc 0 ctl logs "$S" kd distill
n=$(sed -n 's/.*train: resumed from step \([0-9]*\) of.*/\1/p' "$OUT" | tail -n 1)
[ -n "$n" ] && [ "$n" -gt 0 ] && [ "$n" -lt "$STEPS" ] || fail "the retry did not resume: $(grep train: "$OUT" | head -n 3)"
got=$(jq -r '.sweeps[0].lanes[] | select(.id == "kd") | .stages[] | select(.name == "distill") | .metrics.train_loss_last' "$T/st.json")
jq -e '.sweeps[0].lanes[] | select(.id == "kd") | .stages[] | select(.name == "distill") | .metrics.resumed_from_step > 0' \
    "$T/st.json" >/dev/null || fail "the metrics do not show the resume"
echo "final loss: uninterrupted $ref, resumed from step $n $got"
awk -v a="$ref" -v b="$got" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.01 * a) }' ||
    fail "the resumed run's final loss $got is not within 1% of $ref"
ls "$EXAQ_HOME/artifacts" | grep -q '\.train$' && fail "a trainer checkpoint was left behind"
echo "train_resume ok: $S (resumed from step $n)"
