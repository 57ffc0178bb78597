# The AWQ study's quantize keys through a real exaqd on tiny-a (small calibration): salience
# l1 (the default, same stage key as writing nothing) and l2, the zero-point schemes W4A16_ASYM
# and W8A16_ASYM, group_size 256, and rounding greedy for rtn and awq. Every lane finishes with a
# finite perplexity; greedy reports an output error below nearest rounding's; the asymmetric
# checkpoints hold packed weight_zero_point tensors and a symmetric: false quantization_config;
# and unknown values are refused at submit with file:line:column.
. "$(dirname "$0")/lib.sh"
D="$SRC/tests/data/tiny-a"
mkdir -p "$T/w"
NCAL=8 SEQ=256 NWIN=8
[ "$SANITIZED" = 1 ] && NCAL=2 SEQ=64 NWIN=2
cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: awq-study
base_model: $SRC/tests/data/tiny-exaone4
calibration: {ids: $D/calib.ids.u32, samples: $NCAL, seq_len: $SEQ}
eval:
  - ppl: {name: val, ids: $D/val.ids.u32, seq_len: $SEQ, max_windows: $NWIN}
defaults: {retries: 0, timeout_min: 30}
lanes:
  - {id: awq_default, stages: [{quantize: {method: awq, scheme: W4A16_ASYM}}]}
  - {id: awq_l1, stages: [{quantize: {method: awq, scheme: W4A16_ASYM, salience: l1, rounding: nearest}}]}
  - {id: awq_l2_greedy_g256, stages: [{quantize: {method: awq, scheme: W4A16_ASYM, salience: l2, rounding: greedy, group_size: 256}}]}
  - {id: rtn_w8asym_greedy, stages: [{quantize: {method: rtn, scheme: W8A16_ASYM, group_size: 64, rounding: greedy, outlier_percent: 2}}]}
  - {id: gptq_w4asym_g32, stages: [{quantize: {method: gptq, scheme: W4A16_ASYM, group_size: 32}}]}
YAML
start_daemon --slots 1
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 900
status_json "$S" >"$T/st.json"
lane() { jq -r --arg l "$1" ".sweeps[0].lanes[] | select(.id == \$l) | $2" "$T/st.json"; }
for l in awq_default awq_l1 awq_l2_greedy_g256 rtn_w8asym_greedy gptq_w4asym_g32; do
    v=$(lane "$l" '(.stages[] | select(.name == "eval.ppl") | .metrics.ppl) // "missing"')
    echo "$l: val.ppl $v"
    awk -v v="$v" 'BEGIN { exit !(v != "missing" && v + 0 > 1 && v + 0 < 1e4) }' ||
        fail "$l: val.ppl '$v' is not a finite perplexity"
done
# l1 and nearest are the defaults: the same stage key as writing nothing (run once).
k0=$(lane awq_default '.stages[0].key')
k1=$(lane awq_l1 '.stages[0].key')
k2=$(lane awq_l2_greedy_g256 '.stages[0].key')
[ "$k0" = "$k1" ] || fail "salience l1 / rounding nearest changed the stage key ($k0 vs $k1)"
[ "$k0" != "$k2" ] || fail "salience l2 + greedy did not change the stage key"
# Greedy rounding lowers the output error on the calibration data.
for l in awq_l2_greedy_g256 rtn_w8asym_greedy; do
    g=$(lane "$l" '.stages[0].metrics.greedy_vs_nearest // "missing"')
    echo "$l: greedy_vs_nearest $g"
    awk -v v="$g" 'BEGIN { exit !(v != "missing" && v + 0 > 0 && v + 0 < 1) }' ||
        fail "$l: greedy_vs_nearest '$g' is not in (0, 1)"
done
# The checkpoints: pack-quantized with zero points, 8-bit zero points packed 4 per int32 along
# the output dimension ([ceil(out / 4), groups]), 4-bit ones 8 per int32.
for spec in "awq_l2_greedy_g256 4 256" "rtn_w8asym_greedy 8 64"; do
    set -- $spec
    dir="$EXAQ_HOME/artifacts/$(lane "$1" '.stages[0].key')/model"
    [ -f "$dir/config.json" ] || fail "$1: no model at $dir"
    jq -e --argjson b "$2" --argjson g "$3" '.quantization_config.config_groups.group_0 |
        .format == "pack-quantized" and .weights.symmetric == false and
        .weights.num_bits == $b and .weights.group_size == $g' "$dir/config.json" >/dev/null ||
        fail "$1: quantization_config is not asymmetric pack-quantized $2-bit g$3"
    # safetensors header: an 8-byte length, then JSON.
    f="$dir/model.safetensors"
    n=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    dd if="$f" bs=1 skip=8 count="$n" 2>/dev/null >"$T/hdr.json"
    # q_proj of the tiny model: [256, 256]; down_proj: [256, 1024].
    jq -e --argjson b "$2" --argjson g "$3" '
        (."model.layers.0.self_attn.q_proj.weight_zero_point" |
            .dtype == "I32" and .shape == [256 * $b / 32, 256 / $g]) and
        (."model.layers.0.mlp.down_proj.weight_zero_point" |
            .dtype == "I32" and .shape == [256 * $b / 32, 1024 / $g]) and
        (."model.layers.0.mlp.down_proj.weight_packed" | .shape == [256, 1024 * $b / 32])' \
        "$T/hdr.json" >/dev/null || fail "$1: zero-point tensors missing or misshapen"
done
# Unknown values are refused before anything runs.
cat >"$T/w/bad.yaml" <<YAML
version: 1
sweep: bad
base_model: $SRC/tests/data/tiny-exaone4
calibration: {ids: $D/calib.ids.u32}
lanes:
  - {id: a, stages: [{quantize: {method: awq, salience: l3}}]}
YAML
expect_rc 1 ctl submit "$T/w/bad.yaml"
grep -q "bad.yaml:6:57: error: unknown salience 'l3'" "$ERR" || fail "bad salience: $(cat "$ERR")"
cat >"$T/w/bad2.yaml" <<YAML
version: 1
sweep: bad
base_model: $SRC/tests/data/tiny-exaone4
lanes:
  - {id: a, stages: [{quantize: {method: rtn, rounding: greedy, group_size: 512}}]}
YAML
expect_rc 1 ctl submit "$T/w/bad2.yaml"
grep -q "bad2.yaml:5:.*error: 'group_size' must be 32, 64, 128, 256 or -1" "$ERR" ||
    fail "bad group size: $(cat "$ERR")"
grep -q "needs calibration data" "$ERR" || fail "rtn greedy without calibration: $(cat "$ERR")"
echo "awq study ok"
