# Acceptance (docs/design.md, "Promises and the tests that check them"):
# - a stage re-queued by a later sweep runs on that sweep's input, never on the dir of the sweep
#   that first created it (which may have changed or gone since);
# - special files (a FIFO, a link to /dev/zero) and directory symlinks in a base model are
#   refused at submit with a clear error (so no two dirs share a key), and a symlink loop
#   (`ln -s . m/a`) does not hang the submit;
# - a worker killed mid-stage leaves no artifacts/*.tmp-* behind, and `exaqctl gc` removes
#   stale ones of attempts that are not running;
# - a config stage setting vocab_size to 2^40 fails with "out of range (at most 2147483647)",
#   not "must be an integer >= 1".
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
fake_model "$T/w/C"

# --- 1. the re-queued stage reads this sweep's base model -----------------------------------
cat >"$T/w/one.yaml" <<'YAML'
version: 1
sweep: one
base_model: ./C
lanes:
  - id: a
    stages:
      - exec: {produces: both, run: "echo {input} >> inputs; while [ ! -f go ]; do sleep 0.1; done; cp -R {input}/. {output}/; printf '{\"v\": 1}' > {metrics}"}
YAML
sed -e 's/^sweep: one/sweep: two/' -e 's|^base_model: ./C|base_model: ./D|' "$T/w/one.yaml" >"$T/w/two.yaml"
start_daemon --slots 1
expect_rc 0 ctl submit "$T/w/one.yaml"
S1=$(cat "$OUT")
wait_for 30 grep -q . "$T/w/inputs" || fail "sweep one's stage never started"
expect_rc 0 ctl cancel "$S1"
wait_for 30 sh -c "! pgrep -f 'while \[ ! -f go \]' >/dev/null" || fail "the cancelled command kept running"
cp -R "$T/w/C" "$T/w/D"
printf '{"model_type": "exaone4", "changed": true}\n' >"$T/w/C/config.json"
: >"$T/w/inputs"
touch "$T/w/go"
expect_rc 0 ctl submit "$T/w/two.yaml"
S2=$(cat "$OUT")
expect_rc 0 ctl wait "$S2" --timeout 60
status_json "$S2" >"$T/st2.json"
jq -e '.sweeps[0].lanes[] | select(.id == "a") | .state == "done" and .stages[0].reused' \
    "$T/st2.json" >/dev/null || fail "sweep two did not reuse and finish the stage: $(cat "$T/st2.json")"
grep -q "/D\$" "$T/w/inputs" || fail "the stage read '$(cat "$T/w/inputs")', not sweep two's ./D"
key=$(jq -r '.sweeps[0].lanes[] | select(.id == "a") | .stages[0].key' "$T/st2.json")
cmp -s "$T/w/D/config.json" "$EXAQ_HOME/artifacts/$key/model/config.json" ||
    fail "the result cached under D's key was built from another dir"

# The same when the first sweep's dir is gone altogether.
cat >"$T/w/three.yaml" <<'YAML'
version: 1
sweep: three
base_model: ./E
lanes:
  - id: a
    stages:
      - exec: {produces: both, run: "echo {input} >> inputs3; while [ ! -f go3 ]; do sleep 0.1; done; cp -R {input}/. {output}/; printf '{\"v\": 3}' > {metrics}"}
YAML
fake_model "$T/w/E"
printf '{"model_type": "exaone4", "e": 1}\n' >"$T/w/E/config.json"
expect_rc 0 ctl submit "$T/w/three.yaml"
S3=$(cat "$OUT")
wait_for 30 grep -q . "$T/w/inputs3" || fail "sweep three's stage never started"
expect_rc 0 ctl cancel "$S3"
wait_for 30 sh -c "! pgrep -f 'while \[ ! -f go3 \]' >/dev/null" || fail "the cancelled command kept running"
mv "$T/w/E" "$T/w/F"
sed -e 's/^sweep: three/sweep: four/' -e 's|^base_model: ./E|base_model: ./F|' "$T/w/three.yaml" >"$T/w/four.yaml"
touch "$T/w/go3"
expect_rc 0 ctl submit "$T/w/four.yaml"
S4=$(cat "$OUT")
expect_rc 0 ctl wait "$S4" --timeout 60
status_json "$S4" | jq -e '.sweeps[0].lanes[] | select(.id == "a") | .state == "done"' >/dev/null ||
    fail "sweep four failed after sweep three's dir moved: $(status_json "$S4")"

# --- 2. special files and directory symlinks are refused; a loop does not hang ---------------
submit_bad() { # DIR WANT
    sed -e "s/^sweep: one/sweep: bad/" -e "s|^base_model: ./C|base_model: $1|" "$T/w/one.yaml" >"$T/w/bad.yaml"
    expect_rc 1 timeout 20 "$BIN/exaqctl" submit "$T/w/bad.yaml"
    grep -q "$2" "$ERR" || fail "submit on $1: expected '$2' in: $(cat "$ERR")"
}
fake_model "$T/w/fifo"
mkfifo "$T/w/fifo/model.safetensors"
submit_bad ./fifo "'model.safetensors' is a FIFO, not a regular file"
fake_model "$T/w/zero"
ln -s /dev/zero "$T/w/zero/weights.bin"
submit_bad ./zero "'weights.bin' is a character device, not a regular file"
fake_model "$T/w/loop"
ln -s . "$T/w/loop/a"
submit_bad ./loop "'a' is a symlink to a directory; symlinked directories are not followed"
fake_model "$T/w/selfloop"
ln -s b "$T/w/selfloop/b"
submit_bad ./selfloop "'b' is a symlink that does not resolve"
expect_rc 0 ctl ping

# --- 3. a killed worker's partial output is removed; gc removes stale ones ------------------
cat >"$T/w/kill.yaml" <<'YAML'
version: 1
sweep: killed
base_model: ./C
defaults: {retries: 1}
lanes:
  - id: k
    stages:
      - exec: {produces: both, run: "cp -R {input}/. {output}/; head -c 1000000 /dev/zero > {output}/big.bin; echo x >> kruns; [ $(wc -l < kruns) -ge 2 ] || sleep 30; printf '{\"v\": 9}' > {metrics}"}
YAML
expect_rc 0 ctl submit "$T/w/kill.yaml"
SK=$(cat "$OUT")
wait_for 30 grep -q x "$T/w/kruns" || fail "the killed stage never started"
ls -d "$EXAQ_HOME"/artifacts/*.tmp-* >/dev/null 2>&1 || fail "no tmp dir while the stage runs"
wpid=$(status_json | jq '.daemon.slots[0].pid')
kill -9 "$wpid"
expect_rc 0 ctl wait "$SK" --timeout 60
status_json "$SK" | jq -e '.sweeps[0].lanes[] | select(.id == "k") | .stages[0].history[0].class == "lost"' >/dev/null ||
    fail "the first attempt did not fail as lost"
wait_for 10 sh -c "! ls -d '$EXAQ_HOME'/artifacts/*.tmp-* >/dev/null 2>&1" ||
    fail "the lost attempt's partial output stayed: $(ls "$EXAQ_HOME/artifacts")"
# A stale one (as if the removal had not run) goes with gc.
mkdir -p "$EXAQ_HOME/artifacts/0123abcd.tmp-999/model"
head -c 100000 /dev/zero >"$EXAQ_HOME/artifacts/0123abcd.tmp-999/model/x"
expect_rc 0 ctl gc "$SK" --keep best
[ ! -e "$EXAQ_HOME/artifacts/0123abcd.tmp-999" ] || fail "gc left a stale tmp dir"
expect_rc 0 ctl ping

# --- 4. an integer out of range is reported as such -----------------------------------------
cat >"$T/w/big.yaml" <<YAML
version: 1
sweep: big
base_model: $SRC/tests/data/tiny-exaone4
lanes:
  - id: v
    stages:
      - config: {vocab_size: 1099511627776}
YAML
expect_rc 0 ctl submit "$T/w/big.yaml"
SB=$(cat "$OUT")
expect_rc 0 ctl wait "$SB" --timeout 60
msg=$(status_json "$SB" | jq -r '.sweeps[0].lanes[] | select(.id == "v") | .stages[0].error.msg')
case "$msg" in
*"field 'vocab_size' is 1099511627776, out of range (at most 2147483647)"*) ;;
*) fail "config stage error: '$msg'" ;;
esac
echo "ok"
