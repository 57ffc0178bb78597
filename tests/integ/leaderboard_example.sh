# lanes/examples/leaderboard.yaml as shipped (the leaderboard formula with named evals on the tiny
# model and tests/data/leaderboard/), through a real exaqd: every lane completes, each named eval
# writes its NAME.METRIC, the rank scores with them (0.5 PerfNorm + 0.5 SpeedNorm from
# vllm.time_per_token) and packages the top three. vLLM itself is not here: the vllm_speed eval
# runs the recorded stand-in of tests/data/external/ (its only change, with gpus: 0 and fewer
# calibration windows to keep the test short). Takes about 1-2 min on 2 cores.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null || {
    echo "SKIP jq missing"
    exit 77
}
EX=$SRC/lanes/examples/leaderboard.yaml
mkdir -p "$T/w"
# The paths are relative to the example's folder: made absolute; vLLM replaced by its stand-in.
sed -e "s|\.\./\.\./|$SRC/|g" \
    -e "s|      name: vllm |      command: \"$SRC/tests/data/external/fake_vllm.sh bench latency\"\n      name: vllm |" \
    -e "s|      gpus: 1|      gpus: 0|" -e "s|  samples: 128|  samples: 16|" "$EX" >"$T/w/lanes.yaml"
grep -q fake_vllm "$T/w/lanes.yaml" || fail "the example has no vllm_speed eval to stand in for"
[ "$(grep -c "$SRC/tests/data" "$T/w/lanes.yaml")" -ge 5 ] || fail "the example's paths moved"

start_daemon --slots 1
sweep_done "$T/w/lanes.yaml" 900
S=$SWEEP
nl=$(jq '.sweeps[0].lanes | length' "$T/st.json")
[ "$nl" -eq 5 ] || fail "$nl lanes, want the baseline and 4"

expect_rc 0 ctl rank "$S" --json
cp "$OUT" "$T/rank.json"
for k in kmmlu_pro.mcqa_gen_acc kmmlu_redux.mcqa_gen_acc ko_longrag.qa_f1 ko_longrag.qa_f1_char vllm.time_per_token \
    kmmlu_pro.mcqa_gen_n ko_longrag.qa_n; do
    jq -e --arg k "$k" '[.. | objects | select(has($k))] | length > 0' "$T/rank.json" >/dev/null ||
        fail "rank has no metric $k: $(head -c 600 "$T/rank.json")"
done
jq -e '[.. | objects | select(has("kmmlu_pro.mcqa_gen_n")) | .["kmmlu_pro.mcqa_gen_n"]] | all(. == 6)' \
    "$T/rank.json" >/dev/null || fail "kmmlu_pro.mcqa_gen_n is not 6"
jq -e '[.. | objects | select(has("ko_longrag.qa_n")) | .["ko_longrag.qa_n"]] | all(. == 4)' \
    "$T/rank.json" >/dev/null || fail "ko_longrag.qa_n is not 4"
expect_rc 0 ctl rank "$S" --md
cat "$OUT"
grep -q "gptq_w4a16_g128" "$OUT" || fail "the markdown rank lacks a lane"
expect_rc 0 ctl package "$S" --out "$T/pkg"
nz=$(find "$T/pkg" -name '*.zip' | wc -l)
[ "$nz" -eq 3 ] || fail "$nz submission zips, want 3"
echo "ok: leaderboard example ranked and packaged"
