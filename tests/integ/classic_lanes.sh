# The classic lanes example end to end: lanes/examples/classic-tiny.yaml (twelve lanes on the
# tiny EXAONE-4 model: GPTQ W4A16 with and without damping, RTN W8A16, FP8 dynamic and static,
# SmoothQuant W8A8, AWQ W4A16, prune 3/4 and 2/4 + heal + GPTQ, SFT stand-in + GPTQ, SparseGPT
# 2:4 + W4A16, RTN W4A16) runs through a real exaqd. Checks that the baseline and every lane end
# `done` with a finite perplexity and a positive decode time, that the pruned lanes have 3 and 2
# layers, and the per-method metrics: AWQ and SmoothQuant below RTN on every layer, SparseGPT
# below magnitude pruning with at least half the weights zero, a ratio for every AWQ fold.
# Takes about 1-2 minutes on 2 cores; under `make check` it runs on less data.
. "$(dirname "$0")/lib.sh"
DATA=$SRC/tests/data/tiny-a
MODEL=$SRC/tests/data/tiny-exaone4
if [ ! -f "$MODEL/model.safetensors" ] || [ ! -f "$DATA/calib.ids.u32" ]; then
    echo "SKIP tests/data/tiny-exaone4 or tiny-a missing"
    exit 77
fi
command -v jq >/dev/null || {
    echo "SKIP jq missing"
    exit 77
}

LANES=$SRC/lanes/examples/classic-tiny.yaml
if [ "$SANITIZED" = 1 ]; then
    # Sanitized binaries: the same lanes on 4 calibration windows of 128 tokens and 2 ppl
    # windows of 128 (paths made absolute, since the copy lives elsewhere).
    mkdir -p "$T/w"
    sed -e "s#\.\./\.\./#$SRC/#g" -e 's/samples: 32/samples: 4/' -e 's/seq_len: 512/seq_len: 128/g' \
        -e 's/max_windows: 8/max_windows: 2/' "$LANES" >"$T/w/lanes.yaml"
    LANES=$T/w/lanes.yaml
fi
start_daemon --slots 2
expect_rc 0 ctl submit "$LANES"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 1500
status_json "$S" >"$T/st.json"

n=$(jq '[.sweeps[0].lanes[] | select(.id != "baseline")] | length' "$T/st.json")
[ "$n" -eq 12 ] || fail "expected 12 lanes, got $n"
jq -e '[.sweeps[0].lanes[].state] | all(. == "done")' "$T/st.json" >/dev/null ||
    fail "not every lane is done: $(jq -c '[.sweeps[0].lanes[] | {id, state,
        err: [.stages[] | select(.error != null) | .error]}]' "$T/st.json")"

# Every lane (and the baseline): a finite perplexity and a positive time per token.
echo "lane ppl time_per_token"
jq -r '.sweeps[0].lanes[] | [.id,
        ((.stages[] | select(.name == "eval.ppl") | .metrics.ppl) // "missing"),
        ((.stages[] | select(.name == "eval.speed") | .metrics.time_per_token) // "missing")]
       | @tsv' "$T/st.json" | tee "$T/ppl.tsv"
# (On the sanitizers' 256 tokens of ppl data, the 2-layer lane's perplexity is far higher.)
PPL_MAX=1000
[ "$SANITIZED" = 1 ] && PPL_MAX=100000
awk -F'\t' -v pmax=$PPL_MAX '{ if ($2 == "missing" || $3 == "missing" || !($2 + 0 > 1 && $2 + 0 < pmax) ||
               !($3 + 0 > 0)) { print "bad: " $0; bad = 1 } } END { exit bad }' "$T/ppl.tsv" ||
    fail "a lane has no finite ppl or speed"

# metric LANE STAGE NAME
metric() {
    jq -r --arg l "$1" --arg s "$2" --arg k "$3" '.sweeps[0].lanes[] | select(.id == $l) |
        (.stages[] | select(.name == $s) | .metrics[$k]) // "missing"' "$T/st.json"
}
# below LANE STAGE NAME BOUND: the metric exists and is in (0, BOUND).
below() {
    v=$(metric "$1" "$2" "$3")
    awk -v v="$v" -v b="$4" 'BEGIN { exit !(v != "missing" && v + 0 > 0 && v + 0 < b) }' ||
        fail "$1 $2 $3 = $v, expected in (0, $4)"
}
for l in 0 1 2 3; do
    below awq_w4a16 quantize awq_vs_rtn_layer$l 1
    below smoothquant_w8a8 quantize smoothquant_vs_rtn_layer$l 1
    below sparsegpt24_w4a16 quantize sparsegpt_vs_magnitude_layer$l 1
    v=$(metric awq_w4a16 quantize awq_ratio_layer${l}_up_down)
    awk -v v="$v" 'BEGIN { exit !(v == -1 || (v >= 0 && v <= 1)) }' ||
        fail "awq ratio of layer $l up_down is '$v'"
done
v=$(metric sparsegpt24_w4a16 quantize sparsity_actual)
awk -v v="$v" 'BEGIN { exit !(v >= 0.5 && v < 0.6) }' || fail "sparsity_actual $v"
below gptq_w4a16-dampening=0.01 quantize gptq_vs_rtn 1
below gptq_w4a16-dampening=1e-6 quantize gptq_vs_rtn 1

# The pruned lanes really lost layers: their GPTQ reports per-layer losses for 3 and 2 layers.
for p in 3:prune3_heal_gptq_w4a16 2:prune2_heal_gptq_w4a16; do
    want=${p%%:*}
    lane=${p#*:}
    got=$(jq --arg l "$lane" '.sweeps[0].lanes[] | select(.id == $l) |
        [.stages[] | select(.name == "quantize") | .metrics | keys[] |
         select(startswith("gptq_loss_layer"))] | length' "$T/st.json")
    [ "$got" -eq "$want" ] || fail "$lane: GPTQ saw $got layers, expected $want"
done
echo "classic lanes ok"
