# The generated-answer evals end to end: a real exaqd runs a sweep whose eval list is mcqa_gen
# (chat: false, two few-shot items) and qa (chat-wrapped with the EXAONE-4.0 template, a 512-token
# prompt budget) on the tiny test model (a code model: with the chat template it answers no
# letter, so mcqa_gen runs without it and the score stays positive), for the baseline and an exact-copy lane. Checks the
# metric names and ranges in status --json, that the copy equals the baseline, that mcqa_gen_acc
# and the per-category accuracies equal the counts of the stage's own logged picks, that the long
# qa context was cut and counted, that `exaq-worker run` outside the daemon gives the same
# metrics, and that rank uses them. Then lanes errors (file:line:col) and the stage's error for a
# model without a chat template. Takes about 20-40 s on 2 cores.
. "$(dirname "$0")/lib.sh"
MODEL=$SRC/tests/data/tiny-exaone4
D=$SRC/tests/data/evals
W="$BIN/exaq-worker"
command -v jq >/dev/null || {
    echo "SKIP jq missing"
    exit 77
}
# The tiny model with the EXAONE-4.0 chat template beside it.
mkdir -p "$T/w/base"
for f in "$MODEL"/*; do cp "$f" "$T/w/base/"; done
cp "$SRC/tests/data/chat/exaone-4.0-1.2b/chat_template.jinja" "$T/w/base/"

cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: eval-generate
base_model: ./base
eval:
  - mcqa_gen: {items: $D/mcqa_gen.jsonl, chat: false, fewshot: $D/mcqa_gen_fewshot.jsonl, num_fewshot: 2, max_new_tokens: 16, batch: 4}
  - qa: {items: $D/qa.jsonl, max_new_tokens: 24, max_prompt_tokens: 512}
score:
  perf: [{metric: mcqa_gen_acc, higher_is_better: true, weight: 1}, {metric: qa_f1_char, higher_is_better: true, weight: 1}]
  weights: {perf: 1, speed: 0}
package: {top: 0}
defaults: {retries: 0, timeout_min: 5, gpus: 0}
lanes:
  - id: copy
    stages:
      - exec: {run: "cp -R {input}/. {output}/"}
YAML

start_daemon --slots 1
sweep_done "$T/w/lanes.yaml" 600
S=$SWEEP
m() {
    jq -r --arg l "$1" --arg s "$2" --arg k "$3" \
        '.sweeps[0].lanes[] | select(.id == $l) | .stages[] | select(.name == $s) | .metrics[$k]' \
        "$T/st.json"
}
for lane in baseline copy; do
    [ "$(m $lane eval.mcqa_gen mcqa_gen_n)" = 8 ] || fail "$lane: mcqa_gen_n $(m $lane eval.mcqa_gen mcqa_gen_n)"
    [ "$(m $lane eval.qa qa_n)" = 6 ] || fail "$lane: qa_n $(m $lane eval.qa qa_n)"
    for k in mcqa_gen_acc mcqa_gen_parse_fail mcqa_gen_acc_geography mcqa_gen_acc_math \
        mcqa_gen_acc_science mcqa_gen_acc_history mcqa_gen_acc_code; do
        v=$(m $lane eval.mcqa_gen $k)
        awk -v v="$v" 'BEGIN { exit !(v != "null" && v >= 0 && v <= 1) }' || fail "$lane: $k = $v"
    done
    for k in qa_f1 qa_exact_match qa_f1_char; do
        v=$(m $lane eval.qa $k)
        awk -v v="$v" 'BEGIN { exit !(v != "null" && v >= 0 && v <= 1) }' || fail "$lane: $k = $v"
    done
    # Item 5's context (~9,000 tokens) and more exceed 512 tokens: cut, and counted.
    tr=$(m $lane eval.qa qa_truncated)
    [ "$tr" -ge 1 ] && [ "$tr" -le 6 ] || fail "$lane: qa_truncated $tr"
done
for k in mcqa_gen_acc mcqa_gen_parse_fail mcqa_gen_acc_math; do
    [ "$(m copy eval.mcqa_gen $k)" = "$(m baseline eval.mcqa_gen $k)" ] || fail "copy $k differs"
done
for k in qa_f1 qa_exact_match qa_truncated; do
    [ "$(m copy eval.qa $k)" = "$(m baseline eval.qa $k)" ] || fail "copy $k differs"
done
# The stage logs every pick ("line N: pick X, answer Y: text"): the metrics equal their counts.
ctl logs "$S" baseline eval.mcqa_gen >"$T/mg.log"
grep -q "mcqa_gen: 8 items from .*, 2 few-shot, chat off" "$T/mg.log" || fail "mcqa_gen log: $(head -5 "$T/mg.log")"
[ "$(grep -c 'pick ., answer .' "$T/mg.log")" = 8 ] || fail "not 8 picks logged"
acc=$(grep -o 'pick ., answer .' "$T/mg.log" | awk '{ n++; if (substr($2,1,1) == $4) c++ } END { print c / n }')
pf=$(grep -o 'pick ., answer .' "$T/mg.log" | awk '{ n++; if ($2 == "-,") c++ } END { print c / n }')
awk -v a="$acc" -v b="$(m baseline eval.mcqa_gen mcqa_gen_acc)" -v p="$pf" -v q="$(m baseline eval.mcqa_gen mcqa_gen_parse_fail)" \
    'BEGIN { exit !((a - b)^2 < 1e-18 && (p - q)^2 < 1e-18) }' || fail "mcqa_gen_acc/parse_fail vs the logged picks ($acc, $pf)"
# Items 2 and 7 are the math items.
mth=$(grep -o 'line [27]: pick ., answer .' "$T/mg.log" | awk '{ n++; if (substr($4,1,1) == $6) c++ } END { print c / n }')
awk -v a="$mth" -v b="$(m baseline eval.mcqa_gen mcqa_gen_acc_math)" 'BEGIN { exit !((a - b)^2 < 1e-18) }' ||
    fail "mcqa_gen_acc_math $(m baseline eval.mcqa_gen mcqa_gen_acc_math) vs logged $mth"
ctl logs "$S" baseline eval.qa | grep -q "qa: 6 items from .*prompts up to 512 tokens ($tr contexts cut), chat on" ||
    fail "qa log line: $(ctl logs "$S" baseline eval.qa | head -3)"

# The same stages outside the daemon: the same metrics.
expect_rc 0 "$W" run mcqa_gen --input "$T/w/base" --threads 1 \
    --spec "{\"items\":\"$D/mcqa_gen.jsonl\",\"chat\":false,\"fewshot\":\"$D/mcqa_gen_fewshot.jsonl\",\"num_fewshot\":2,\"max_new_tokens\":16,\"batch\":1}"
tail -n 1 "$OUT" >"$T/mg.json"
jq -e --argjson a "$(m baseline eval.mcqa_gen mcqa_gen_acc)" --argjson c "$(m baseline eval.mcqa_gen mcqa_gen_acc_code)" \
    '.mcqa_gen_acc == $a and .mcqa_gen_acc_code == $c and .mcqa_gen_n == 8' "$T/mg.json" >/dev/null ||
    fail "run mcqa_gen (batch 1): $(cat "$T/mg.json")"
expect_rc 0 "$W" run qa --input "$T/w/base" --threads 1 \
    --spec "{\"items\":\"$D/qa.jsonl\",\"max_new_tokens\":24,\"max_prompt_tokens\":512,\"limit\":0,\"batch\":8}"
tail -n 1 "$OUT" >"$T/qa.json"
jq -e --argjson f "$(m baseline eval.qa qa_f1)" --argjson t "$tr" '.qa_f1 == $f and .qa_truncated == $t and .qa_n == 6' \
    "$T/qa.json" >/dev/null || fail "run qa: $(cat "$T/qa.json")"

# rank uses the generated-answer metrics.
expect_rc 0 ctl rank "$S" --json
jq -e '.baseline.metrics | has("mcqa_gen_acc") and has("qa_f1") and has("qa_f1_char")' "$OUT" >/dev/null ||
    fail "rank baseline metrics: $(jq -c .baseline "$OUT")"
jq -e '.lanes[0].lane == "copy" and (.lanes[0].score | type) == "number"' "$OUT" >/dev/null ||
    fail "rank lanes: $(jq -c .lanes "$OUT")"

# Lanes errors, with file:line:col.
bad() {
    # bad NAME LOCATION TEXT  (the eval line comes on stdin)
    f="$T/w/$1.yaml"
    { printf 'version: 1\nsweep: bad\nbase_model: ./base\neval:\n'; cat; printf 'lanes: [{id: a, stages: [{exec: {run: "true"}}]}]\n'; } >"$f"
    expect_rc 1 ctl submit "$f"
    grep -q "^$f:$2: error: .*$3" "$ERR" || fail "$1: want '$f:$2: error: ...$3', got: $(cat "$ERR")"
}
cp "$D/mcqa_gen.jsonl" "$D/qa.jsonl" "$T/w/"
bad no_items 5:5 "mcqa_gen needs 'items: PATH'" <<'YAML'
  - mcqa_gen: {limit: 3}
YAML
bad tmpl 5:49 "the mcqa_gen template must contain the placeholder {question}" <<'YAML'
  - mcqa_gen: {items: mcqa_gen.jsonl, template: "no placeholder"}
YAML
bad shots 5:39 "'num_fewshot' needs 'fewshot: PATH'" <<'YAML'
  - mcqa_gen: {items: mcqa_gen.jsonl, num_fewshot: 2}
YAML
bad qa_tmpl 5:37 "the qa template must contain the placeholder {context}" <<'YAML'
  - qa: {items: qa.jsonl, template: "{question}"}
YAML
bad chat_type 5:33 "chat" <<'YAML'
  - qa: {items: qa.jsonl, chat: maybe}
YAML
bad new_tokens 5:43 "max_new_tokens" <<'YAML'
  - qa: {items: qa.jsonl, max_new_tokens: 0}
YAML
bad kind 5:5 "unknown stage kind 'qa_gen'" <<'YAML'
  - qa_gen: {items: qa.jsonl}
YAML
expect_rc 0 ctl shutdown

# A model without a chat template, chat on (the default): a clear error naming the way out.
expect_rc 1 "$W" run qa --input "$MODEL" --spec "{\"items\":\"$D/qa.jsonl\"}"
grep -q "chat: false" "$ERR" "$OUT" || fail "no chat-template message: $(cat "$ERR" "$OUT")"
expect_rc 1 "$W" run mcqa_gen --input "$MODEL" --spec "{\"chat\":false}"
grep -q "needs 'items: PATH'" "$ERR" "$OUT" || fail "no items message: $(cat "$ERR" "$OUT")"
