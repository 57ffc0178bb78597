# Acceptance: depth pruning and healing through a real exaqd on tiny-a. A prune-only lane
# (block influence, keep 3 of 4 layers) and a prune + heal lane (lsq, fold both) share the prune
# stage; the ppl eval (8 windows of 512) of the healed lane is lower than the prune-only one's,
# and both are above the baseline's. Also checks the stage metrics, the pruned artifact's config
# and exaq_prune.json, and the logs. Takes about 20-40 s on 2 cores.
. "$(dirname "$0")/lib.sh"
DATA=$SRC/tests/data
if [ ! -f "$DATA/tiny-exaone4/model.safetensors" ] || [ ! -f "$DATA/tiny-a/calib.ids.u32" ]; then
    echo "SKIP tiny-a data missing"
    exit 77
fi
mkdir -p "$T/w"
# Sanitized binaries (make check) calibrate on 8 windows instead of 32.
NCAL=32
[ "$SANITIZED" = 1 ] && NCAL=8
cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: prune-heal
base_model: $DATA/tiny-exaone4
calibration: {ids: $DATA/tiny-a/calib.ids.u32, samples: $NCAL, seq_len: 512}
eval:
  - ppl: {ids: $DATA/tiny-a/val.ids.u32, seq_len: 512, max_windows: 8}
defaults: {retries: 0, gpus: 0}
lanes:
  - id: pruned
    stages:
      - prune: {keep_layers: 3}
  - id: healed
    stages:
      - prune: {keep_layers: 3}
      - heal: {method: lsq}
YAML
start_daemon --slots 1
sweep_done "$T/w/lanes.yaml" 600
S=$SWEEP

ppl() {
    jq -r --arg l "$1" '.sweeps[0].lanes[] | select(.id == $l) | .stages[] |
        select(.name == "eval.ppl") | .metrics.ppl' "$T/st.json"
}
base=$(ppl baseline)
pruned=$(ppl pruned)
healed=$(ppl healed)
echo "ppl: baseline $base, pruned $pruned, pruned+healed $healed"
for v in "$base" "$pruned" "$healed"; do
    case "$v" in '' | null) fail "a ppl metric is missing: $base $pruned $healed" ;; esac
done
awk -v b="$base" -v p="$pruned" -v h="$healed" 'BEGIN { exit !(h < p && b < h) }' ||
    fail "expected baseline < healed < pruned, got $base, $healed, $pruned"

# The prune stage ran once for both lanes and reported its metrics.
k1=$(jq -r '.sweeps[0].lanes[] | select(.id == "pruned") | .stages[0].key' "$T/st.json")
k2=$(jq -r '.sweeps[0].lanes[] | select(.id == "healed") | .stages[0].key' "$T/st.json")
[ "$k1" = "$k2" ] || fail "the shared prune stage got two keys"
jq -e '.sweeps[0].lanes[] | select(.id == "pruned") | .stages[0].metrics |
       .layers_removed == 1 and ([.bi_layer_0, .bi_layer_1, .bi_layer_2, .bi_layer_3] |
       all(. > 0))' "$T/st.json" >/dev/null || fail "prune metrics: $(jq -c '.sweeps[0].lanes[0].stages[0].metrics' "$T/st.json")"
jq -e '.sweeps[0].lanes[] | select(.id == "healed") | .stages[] | select(.name == "heal") |
       .metrics | .heal_err_after < .heal_err_before' "$T/st.json" >/dev/null ||
    fail "heal did not lower the residual error"

# The pruned artifact: 3 layers, a consistent config, the record naming the base model.
art=$EXAQ_HOME/artifacts/$k1/model
jq -e '.num_hidden_layers == 3 and (.layer_types | length) == 3' "$art/config.json" >/dev/null ||
    fail "pruned config.json is inconsistent"
jq -e --arg src "$(cd "$DATA/tiny-exaone4" && pwd -P)" \
    '.source == $src and (.kept | length) == 3 and (.removed | length) == 1' \
    "$art/exaq_prune.json" >/dev/null || fail "exaq_prune.json: $(cat "$art/exaq_prune.json")"
[ -f "$art/tokenizer.json" ] || fail "tokenizer.json not copied"

# The logs show what each stage did.
expect_rc 0 ctl logs "$S" healed
grep -q "block influence" "$OUT" || fail "prune log lacks block influence"
grep -q "heal: relative residual error" "$OUT" || fail "heal log lacks the error line"
echo "prune_heal ok: $S"
