# Native eval stages end to end: a real exaqd runs a sweep on the tiny test model whose eval list
# is ppl (ids, a few windows), mcqa (limit 20) and speed, on the baseline and two exec lanes (an
# exact copy, and a copy with one weight byte edited). Checks the metric names and sane values in
# status --json (the copy's ppl and mcqa equal the baseline's exactly, the edited model's ppl
# differs, so each eval ran on its own lane's model), and that rank --json ranks both lanes.
# Then `exaq-worker synth` writes a tiny hybrid v5-style model with the test tokenizer, and
# `exaq-worker run ppl` on it (ids and text) gives finite metrics; synth's errors exit 1.
# `run --backend cuda` without a usable backend falls back to the CPU with the same result and
# says why; `logits` writes [n][vocab] floats, and --weights-only changes a W8A8 model's logits
# but not a BF16 model's.
# Takes about 10-20 s on 2 cores.
. "$(dirname "$0")/lib.sh"
DATA=$SRC/tests/data/tiny-a
MODEL=$SRC/tests/data/tiny-exaone4
if [ ! -f "$MODEL/model.safetensors" ] || [ ! -f "$DATA/val.ids.u32" ]; then
    echo "SKIP tests/data/tiny-exaone4 or tiny-a missing"
    exit 77
fi
command -v jq >/dev/null || {
    echo "SKIP jq missing"
    exit 77
}

mkdir -p "$T/w"
cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: eval-native
base_model: $MODEL
eval:
  - ppl: {ids: $DATA/val.ids.u32, seq_len: 128, max_windows: 6}
  - mcqa: {items: $DATA/mcqa.jsonl, limit: 20}
  - speed: {prompt_tokens: 32, gen_tokens: 16, repeats: 3}
score:
  perf: [{metric: ppl, higher_is_better: false, weight: 1}, {metric: mcqa_acc, higher_is_better: true, weight: 1}]
  speed: {metric: time_per_token}
  weights: {perf: 0.5, speed: 0.5}
package: {top: 0}
defaults: {retries: 0, timeout_min: 5, gpus: 0}
lanes:
  - id: copy
    stages:
      - exec: {run: "cp -R {input}/. {output}/"}
  # The last two bytes of model.safetensors are model.norm.weight[255] (bf16, little-endian): its
  # low byte (7 mantissa bits and the lowest exponent bit) becomes 0x42 ('B'), which moves the
  # weight by less than a factor of two.
  - id: edited
    stages:
      - exec:
          run: |
            cp -R {input}/. {output}/ && chmod u+w {output}/model.safetensors
            size=\$(stat -c %s {output}/model.safetensors)
            printf B | dd of={output}/model.safetensors bs=1 seek=\$((size - 2)) conv=notrunc 2>/dev/null
YAML

start_daemon --slots 2
sweep_done "$T/w/lanes.yaml" 300
S=$SWEEP

# m LANE STAGE METRIC: one metric from status --json ("null" when absent).
m() {
    jq -r --arg l "$1" --arg s "$2" --arg k "$3" \
        '.sweeps[0].lanes[] | select(.id == $l) | .stages[] | select(.name == $s) | .metrics[$k]' \
        "$T/st.json"
}
for lane in baseline copy edited; do
    for k in ppl nll_mean eval_tokens; do [ "$(m $lane eval.ppl $k)" != null ] || fail "$lane lacks $k"; done
    for k in mcqa_acc mcqa_acc_norm mcqa_items; do [ "$(m $lane eval.mcqa $k)" != null ] || fail "$lane lacks $k"; done
    for k in time_per_token decode_tok_s prefill_tok_s; do [ "$(m $lane eval.speed $k)" != null ] || fail "$lane lacks $k"; done
    ppl=$(m $lane eval.ppl ppl) nll=$(m $lane eval.ppl nll_mean)
    [ "$(m $lane eval.ppl eval_tokens)" = 768 ] || fail "$lane: eval_tokens $(m $lane eval.ppl eval_tokens), want 6 x 128"
    awk -v p="$ppl" -v n="$nll" 'BEGIN { exit !(p > 1 && p < 1000 && (log(p) - n)^2 < 1e-18) }' ||
        fail "$lane: ppl $ppl, nll_mean $nll"
    [ "$(m $lane eval.mcqa mcqa_items)" = 20 ] || fail "$lane: mcqa_items $(m $lane eval.mcqa mcqa_items)"
    a=$(m $lane eval.mcqa mcqa_acc) an=$(m $lane eval.mcqa mcqa_acc_norm)
    awk -v a="$a" -v b="$an" 'BEGIN { exit !(a >= 0 && a <= 1 && b >= 0 && b <= 1) }' ||
        fail "$lane: mcqa_acc $a, mcqa_acc_norm $an"
    t=$(m $lane eval.speed time_per_token) d=$(m $lane eval.speed decode_tok_s) p=$(m $lane eval.speed prefill_tok_s)
    awk -v t="$t" -v d="$d" -v p="$p" 'BEGIN { exit !(t > 0 && t < 1 && (d * t - 1)^2 < 1e-18 && p > 0) }' ||
        fail "$lane: time_per_token $t, decode_tok_s $d, prefill_tok_s $p"
done
# The baseline on tiny-a: a trained model (ppl ~13-20 on 128-token windows), well above chance.
bp=$(m baseline eval.ppl ppl)
awk -v p="$bp" -v a="$(m baseline eval.mcqa mcqa_acc)" 'BEGIN { exit !(p > 5 && p < 40 && a > 0.4) }' ||
    fail "baseline ppl $bp, mcqa_acc $(m baseline eval.mcqa mcqa_acc)"
# The copy is the same model: the same numbers (the engine is deterministic at a fixed thread
# count: bit-identical in practice; 1e-12 allowed). The edited model
# differs, so each lane's eval read its own model.
awk -v a="$(m copy eval.ppl ppl)" -v b="$bp" 'BEGIN { exit !((a / b - 1)^2 < 1e-24) }' ||
    fail "copy ppl $(m copy eval.ppl ppl) != baseline $bp"
[ "$(m copy eval.mcqa mcqa_acc)" = "$(m baseline eval.mcqa mcqa_acc)" ] || fail "copy mcqa_acc differs"
ep=$(m edited eval.ppl ppl)
awk -v a="$ep" -v b="$bp" 'BEGIN { exit !(a != b && (a / b - 1)^2 > 1e-8) }' ||
    fail "edited ppl $ep is the baseline's $bp: the edit did not reach the eval"

# rank --json ranks both lanes with the native metrics.
expect_rc 0 ctl rank "$S" --json
cp "$OUT" "$T/rank.json"
jq -e '.baseline.metrics | has("ppl") and has("mcqa_acc") and has("time_per_token") and
       has("decode_tok_s") and has("prefill_tok_s") and has("nll_mean") and has("eval_tokens")' \
    "$T/rank.json" >/dev/null || fail "baseline metrics in rank: $(jq -c .baseline "$T/rank.json")"
jq -e '[.lanes[].lane] | sort == ["copy", "edited"]' "$T/rank.json" >/dev/null || fail "rank lanes"
jq -e '[.lanes[].rank] | sort == [1, 2]' "$T/rank.json" >/dev/null ||
    fail "lanes not ranked: $(jq -c '[.lanes[] | {lane, rank, reason}]' "$T/rank.json")"
jq -e '.lanes[] | (.score | type) == "number" and .metrics.ppl > 0 and .metrics.mcqa_items == 20' \
    "$T/rank.json" >/dev/null || fail "lane scores"
# The logs show the native stages' own lines.
ctl logs "$S" baseline eval.ppl | grep -q "ppl: 6 windows of 128 tokens" || fail "ppl log line missing"
ctl logs "$S" baseline eval.mcqa | grep -q "mcqa: acc" || fail "mcqa log line missing"
expect_rc 0 ctl shutdown

# ---- exaq-worker synth + run ppl ----
W="$BIN/exaq-worker"
"$W" synth --out "$T/syn" --shape tiny --hybrid --v5 --seed 3 --tokenizer "$MODEL/tokenizer.json" \
    --max-shard-mb 1 >"$OUT" 2>"$ERR" || fail "synth failed: $(cat "$ERR")"
grep -q "wrote a synthetic tiny hybrid model" "$OUT" || fail "synth output: $(cat "$OUT")"
jq -e '.layer_types == ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
       and .sliding_window == 32 and has("rope_parameters") and (has("rope_theta") | not)' \
    "$T/syn/config.json" >/dev/null || fail "synth config: $(cat "$T/syn/config.json")"
[ -f "$T/syn/tokenizer.json" ] || fail "synth did not copy the tokenizer"
# A small ids file: the first 1025 validation ids (8 windows of 128).
head -c 4100 "$DATA/val.ids.u32" >"$T/small.ids"
expect_rc 0 "$W" run ppl --input "$T/syn" --threads 2 \
    --spec "{\"ids\":\"$T/small.ids\",\"max_windows\":0,\"seq_len\":128}"
jq -e '.eval_tokens == 1024 and (.ppl | isinfinite | not) and .ppl > 1 and
       ((.nll_mean | exp) - .ppl | fabs) < 1e-6 * .ppl' "$OUT" >/dev/null ||
    fail "synth ppl metrics: $(cat "$OUT")"
# Random weights: the perplexity is near the vocabulary size (4096).
jq -e '.ppl > 1000 and .ppl < 20000' "$OUT" >/dev/null || fail "synth ppl not near 4096: $(cat "$OUT")"
cp "$OUT" "$T/ppl-cpu.json"
# --backend cuda without a usable backend (disabled here, so the same on GPU machines): the
# stage says why and computes the same perplexity on the CPU.
expect_rc 0 env EXAQ_CUDA_LIB=off "$W" run ppl --input "$T/syn" --threads 2 --backend cuda \
    --spec "{\"ids\":\"$T/small.ids\",\"max_windows\":0,\"seq_len\":128}"
grep -q "the CUDA backend is unavailable (disabled: EXAQ_CUDA_LIB=off); running on the CPU" "$ERR" ||
    fail "ppl --backend cuda without a backend: $(cat "$ERR")"
grep -q "engine kernels on the CPU" "$ERR" || fail "ppl engine line: $(cat "$ERR")"
[ "$(jq .ppl "$OUT")" = "$(jq .ppl "$T/ppl-cpu.json")" ] ||
    fail "ppl on the CPU fallback differs: $(cat "$OUT") vs $(cat "$T/ppl-cpu.json")"
expect_rc 1 "$W" run ppl --input "$T/syn" --backend tpu --spec "{\"ids\":\"$T/small.ids\"}"
grep -q -- "--backend wants cpu or cuda, not 'tpu'" "$ERR" || fail "bad --backend: $(cat "$ERR")"
# logits: float32 [n][vocab]; --weights-only changes nothing on a BF16 model; bad --impl and an
# unavailable backend are errors.
expect_rc 0 "$W" logits --input "$T/syn" --ids "$T/small.ids" --n 8 --out "$T/l1.f32"
[ "$(wc -c <"$T/l1.f32")" -eq $((8 * 4096 * 4)) ] || fail "logits size: $(wc -c <"$T/l1.f32")"
expect_rc 0 "$W" logits --input "$T/syn" --ids "$T/small.ids" --n 8 --out "$T/l2.f32" --weights-only
cmp -s "$T/l1.f32" "$T/l2.f32" || fail "--weights-only changed the logits of a BF16 model"
# On a W8A8 model --weights-only turns the activation quantization off: the logits change.
expect_rc 0 "$W" run quantize --input "$T/syn" --output "$T/syn-w8a8" --threads 2 \
    --spec '{"method":"rtn","scheme":"W8A8"}'
expect_rc 0 "$W" logits --input "$T/syn-w8a8/model" --ids "$T/small.ids" --n 8 --out "$T/q1.f32"
expect_rc 0 "$W" logits --input "$T/syn-w8a8/model" --ids "$T/small.ids" --n 8 --out "$T/q2.f32" \
    --weights-only
! cmp -s "$T/q1.f32" "$T/q2.f32" || fail "--weights-only did not change the logits of a W8A8 model"
expect_rc 1 "$W" logits --input "$T/syn" --ids "$T/small.ids" --out "$T/l3.f32" --impl gpu
grep -q -- "--impl wants cpu or cuda, not 'gpu'" "$ERR" || fail "bad --impl: $(cat "$ERR")"
expect_rc 1 env EXAQ_CUDA_LIB=off "$W" logits --input "$T/syn" --ids "$T/small.ids" \
    --out "$T/l3.f32" --impl cuda
grep -q -- "--impl cuda: disabled: EXAQ_CUDA_LIB=off" "$ERR" || fail "logits --impl cuda: $(cat "$ERR")"
# Text works too (the tokenizer was copied), and mcqa.
expect_rc 0 "$W" run ppl --input "$T/syn" --threads 2 \
    --spec "{\"max_windows\":2,\"seq_len\":64,\"text\":\"$DATA/calib.txt\"}"
jq -e '.eval_tokens == 128 and .ppl > 1' "$OUT" >/dev/null || fail "synth text ppl: $(cat "$OUT")"
expect_rc 0 "$W" run mcqa --input "$T/syn" --threads 2 --spec "{\"items\":\"$DATA/mcqa.jsonl\",\"limit\":3}"
jq -e '.mcqa_items == 3' "$OUT" >/dev/null || fail "synth mcqa: $(cat "$OUT")"
# Errors.
expect_rc 1 "$W" run ppl --input "$T/syn" --spec "{\"ids\":\"$T/small.ids\",\"seq_len\":1025}"
grep -q "not enough for one window of seq_len 1025" "$ERR" || fail "short-file error: $(cat "$ERR")"
expect_rc 1 "$W" synth --out "$T/syn"
grep -q "already holds a model" "$ERR" || fail "synth over a model: $(cat "$ERR")"
expect_rc 1 "$W" synth --out "$T/syn2" --shape 7b
grep -q "unknown --shape '7b'" "$ERR" || fail "synth shape error: $(cat "$ERR")"
expect_rc 1 "$W" synth --shape tiny
grep -q -- "--out DIR is required" "$ERR" || fail "synth without --out: $(cat "$ERR")"
echo "eval_native ok: $S"
