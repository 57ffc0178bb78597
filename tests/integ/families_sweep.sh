# Acceptance (model families): a sweep through a real exaqd on a non-EXAONE family, the Llama
# test model of tests/data/families (random weights, pre-norm, llama3 RoPE, tied head). Lanes:
# GPTQ W4A16 g32, AWQ W4A16 g32 (pre-norm folds: input_layernorm -> q/k/v, post_attention_
# layernorm -> gate/up, v -> o, up -> down), SmoothQuant W8A8, depth pruning 3 -> 2 layers, and
# pruning + healing; each gets the ppl eval. Checks every lane is done with a finite perplexity,
# the AWQ lane searched the four pre-norm folds, the quantized artifacts carry a
# compressed-tensors quantization_config and reload in exaq (the ppl eval reads them), the
# pruned config.json has 2 layers and no layer_types (not a Llama key), and healing lowered the
# residual error. The random model has no meaningful perplexity, so the bounds are loose: each
# lane within a factor 2 of the baseline. Takes about 20-60 s on 2 cores.
. "$(dirname "$0")/lib.sh"
DATA=$SRC/tests/data
M=$DATA/families/llama
if [ ! -f "$M/model.safetensors" ] || [ ! -f "$DATA/tiny-a/calib.ids.u32" ]; then
    echo "SKIP families data missing"
    exit 77
fi
mkdir -p "$T/w"
NCAL=16
[ "$SANITIZED" = 1 ] && NCAL=4
cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: families
base_model: $M
calibration: {ids: $DATA/tiny-a/calib.ids.u32, samples: $NCAL, seq_len: 128}
eval:
  - ppl: {ids: $DATA/tiny-a/val.ids.u32, seq_len: 128, max_windows: 8}
defaults: {retries: 0, gpus: 0}
lanes:
  - {id: gptq_w4, stages: [{quantize: {method: gptq, scheme: W4A16, group_size: 32}}]}
  - {id: awq_w4, stages: [{quantize: {method: awq, scheme: W4A16, group_size: 32}}]}
  - {id: sq_w8a8, stages: [{quantize: {method: smoothquant, scheme: W8A8}}]}
  - id: pruned
    stages:
      - prune: {keep_layers: 2}
  - id: healed
    stages:
      - prune: {keep_layers: 2}
      - heal: {method: lsq}
YAML
start_daemon --slots 1
sweep_done "$T/w/lanes.yaml" 600
S=$SWEEP

ppl() {
    jq -r --arg l "$1" '.sweeps[0].lanes[] | select(.id == $l) |
        (.stages[] | select(.name == "eval.ppl") | .metrics.ppl) // "missing"' "$T/st.json"
}
base=$(ppl baseline)
for l in gptq_w4 awq_w4 sq_w8a8 pruned healed; do
    v=$(ppl $l)
    echo "$l: ppl $v (baseline $base)"
    awk -v v="$v" -v b="$base" 'BEGIN { exit !(v != "missing" && b + 0 > 1 && v + 0 > b / 2 &&
        v + 0 < 2 * b) }' || fail "$l: ppl $v is not within a factor 2 of the baseline $base"
done

key() {
    jq -r --arg l "$1" --arg s "$2" '.sweeps[0].lanes[] | select(.id == $l) | .stages[] |
        select(.name == $s) | .key' "$T/st.json"
}
# AWQ searched the pre-norm folds of every layer (the metric names the fold).
for f in in_qkv v_o post_gateup up_down; do
    jq -e --arg f "$f" '.sweeps[0].lanes[] | select(.id == "awq_w4") | .stages[0].metrics |
        [to_entries[] | select(.key | test("^awq_ratio_layer[0-9]+_" + $f + "$"))] | length == 3' \
        "$T/st.json" >/dev/null || fail "awq_w4: no ratio for fold $f in every layer: $(jq -c '.sweeps[0].lanes[] | select(.id == "awq_w4") | .stages[0].metrics' "$T/st.json")"
done
# AWQ's search includes the identity and the clip search only lowers the loss: per layer, its
# output loss (all four folds' targets) is at most RTN's.
jq -r '.sweeps[0].lanes[] | select(.id == "awq_w4" or .id == "sq_w8a8") | .stages[0].metrics |
    to_entries[] | select(.key | test("_vs_rtn_layer")) | "\(.key) \(.value)"' "$T/st.json" |
    sort >"$T/vs"
cat "$T/vs"
[ "$(grep -c '^awq_vs_rtn_layer' "$T/vs")" = 3 ] || fail "awq_w4: missing per-layer losses"
awk '/^awq_vs_rtn/ && !($2 > 0 && $2 <= 1.0001) { bad = 1 } END { exit bad }' "$T/vs" ||
    fail "awq_w4: a layer's AWQ loss is above RTN's"
for l in gptq_w4 awq_w4; do
    art=$EXAQ_HOME/artifacts/$(jq -r --arg l "$l" '.sweeps[0].lanes[] | select(.id == $l) |
        .stages[0].key' "$T/st.json")/model
    jq -e '.model_type == "llama" and .quantization_config.format == "pack-quantized" and
        (.quantization_config.ignore | index("lm_head"))' "$art/config.json" >/dev/null ||
        fail "$l: quantization_config: $(jq -c .quantization_config "$art/config.json")"
done
art=$EXAQ_HOME/artifacts/$(jq -r '.sweeps[0].lanes[] | select(.id == "pruned") | .stages[0].key' \
    "$T/st.json")/model
jq -e '.model_type == "llama" and .num_hidden_layers == 2 and (has("layer_types") | not)' \
    "$art/config.json" >/dev/null || fail "pruned config.json: $(cat "$art/config.json")"
jq -e '.sweeps[0].lanes[] | select(.id == "healed") | .stages[] | select(.name == "heal") |
       .metrics | .heal_err_after < .heal_err_before' "$T/st.json" >/dev/null ||
    fail "heal did not lower the residual error: $(jq -c '.sweeps[0].lanes[] | select(.id == "healed") | .stages[] | select(.name == "heal") | .metrics' "$T/st.json")"
echo "families_sweep ok: $S"
