# Acceptance: the native trainer through a real exaqd on tiny-a (docs/training.md).
#  - prune 2 of 4 layers then distill (KL toward the sweep's base model) ends at a lower
#    validation perplexity than prune then heal;
#  - finetune with LoRA lowers the perplexity of its own training data, and the merged model
#    is a plain checkpoint of the input's shape;
#  - prune -> distill -> quantize (GPTQ W4A16) runs end to end (the prune and distill stages
#    are shared with the distill lane: one run each).
# Also checks the progress line and the stage metrics, and that no checkpoint is left behind.
# Takes about 2-3 minutes on 2 shared cores.
. "$(dirname "$0")/lib.sh"
DATA=$SRC/tests/data
if [ ! -f "$DATA/tiny-exaone4/model.safetensors" ] || [ ! -f "$DATA/tiny-a/calib.ids.u32" ]; then
    echo "SKIP tiny-a data missing"
    exit 77
fi
mkdir -p "$T/w"
# The finetune's own data: the first ~1500 tokens of the calibration text.
head -c 6000 "$DATA/tiny-a/calib.txt" >"$T/w/ft.txt"
KD_TOKENS=6144
FT_TOKENS=4096
[ "$SANITIZED" = 1 ] && KD_TOKENS=1024 && FT_TOKENS=1024
cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: train
base_model: $DATA/tiny-exaone4
calibration: {ids: $DATA/tiny-a/calib.ids.u32, samples: 16, seq_len: 256}
eval:
  - ppl: {ids: $DATA/tiny-a/val.ids.u32, seq_len: 256, max_windows: 8}
defaults: {retries: 0, gpus: 0}
lanes:
  - id: healed
    stages:
      - prune: {remove: 2}
      - heal: {method: lsq}
  - id: distilled
    stages:
      - prune: {remove: 2}
      - distill: {tokens: $KD_TOKENS, seq_len: 64, batch: 4, lr: 0.002, warmup: 3}
  - id: kd_gptq
    stages:
      - prune: {remove: 2}
      - distill: {tokens: $KD_TOKENS, seq_len: 64, batch: 4, lr: 0.002, warmup: 3}
      - quantize: {method: gptq, scheme: W4A16}
  - id: lora
    stages:
      - finetune: {method: lora, rank: 4, alpha: 8, data: $T/w/ft.txt, tokens: $FT_TOKENS,
                   seq_len: 64, batch: 2, lr: 0.005, warmup: 2, val_fraction: 0}
YAML
start_daemon --slots 1
sweep_done "$T/w/lanes.yaml" 1200
S=$SWEEP

ppl() {
    jq -r --arg l "$1" '.sweeps[0].lanes[] | select(.id == $l) | .stages[] |
        select(.name == "eval.ppl") | .metrics.ppl' "$T/st.json"
}
smetric() { # lane stage metric
    jq -r --arg l "$1" --arg s "$2" --arg m "$3" '.sweeps[0].lanes[] | select(.id == $l) |
        .stages[] | select(.name == $s) | .metrics[$m]' "$T/st.json"
}
base=$(ppl baseline)
healed=$(ppl healed)
kd=$(ppl distilled)
kdq=$(ppl kd_gptq)
lora=$(ppl lora)
echo "ppl: baseline $base, prune+heal $healed, prune+distill $kd, prune+distill+gptq $kdq, lora $lora"
for v in "$base" "$healed" "$kd" "$kdq" "$lora"; do
    case "$v" in '' | null) fail "a ppl metric is missing" ;; esac
done
awk -v h="$healed" -v k="$kd" -v b="$base" 'BEGIN { exit !(k < h && b < k) }' ||
    fail "expected baseline < prune+distill < prune+heal, got $base, $kd, $healed"
awk -v k="$kd" -v q="$kdq" 'BEGIN { exit !(q > 0 && q < 2 * k) }' ||
    fail "the GPTQ model of the distilled one is far off: $kdq vs $kd"

# The distill stage: trained (loss metrics), validated lower than it started.
vb=$(smetric distilled distill val_ppl_before)
va=$(smetric distilled distill val_ppl)
awk -v a="$va" -v b="$vb" 'BEGIN { exit !(a < b) }' || fail "distill val ppl $vb -> $va"
[ "$(smetric distilled distill train_steps)" = 24 ] || [ "$SANITIZED" = 1 ] ||
    fail "distill steps: $(smetric distilled distill train_steps)"
# The shared stages ran once: the same keys in both lanes.
for i in 0 1; do
    k1=$(jq -r ".sweeps[0].lanes[] | select(.id == \"distilled\") | .stages[$i].key" "$T/st.json")
    k2=$(jq -r ".sweeps[0].lanes[] | select(.id == \"kd_gptq\") | .stages[$i].key" "$T/st.json")
    [ "$k1" = "$k2" ] || fail "stage $i of the distill lanes got two keys"
done
jq -e '.sweeps[0].lanes[] | select(.id == "kd_gptq") | .stages[2].metrics |
       [to_entries[] | select(.key | startswith("gptq_loss_layer"))] | length == 2' "$T/st.json" \
    >/dev/null || fail "the quantize stage after distill has no GPTQ layer losses"

# LoRA lowered its own training data's perplexity.
tb=$(smetric lora finetune train_ppl_before)
ta=$(smetric lora finetune train_ppl)
echo "lora train ppl $tb -> $ta"
awk -v a="$ta" -v b="$tb" 'BEGIN { exit !(a < 0.9 * b) }' || fail "LoRA train ppl $tb -> $ta"
kl=$(jq -r '.sweeps[0].lanes[] | select(.id == "lora") | .stages[0].key' "$T/st.json")
jq -e '.num_hidden_layers == 4' "$EXAQ_HOME/artifacts/$kl/model/config.json" >/dev/null ||
    fail "the merged LoRA model's config"

# Logs: progress lines with loss, tok/s and ETA; no checkpoint left behind.
expect_rc 0 ctl logs "$S" distilled distill
grep -Eq "train: step [0-9]+/[0-9]+ loss [0-9.]+ .* tok/s eta " "$OUT" || fail "no progress line"
grep -q "distill: after" "$OUT" || fail "no summary line"
expect_rc 0 ctl logs "$S" lora
grep -q "finetune: LoRA rank 4" "$OUT" || fail "the LoRA setup line is missing"
ls "$EXAQ_HOME/artifacts" | grep -q '\.train$' && fail "a trainer checkpoint was left behind"
echo "train ok: $S"
