# exaq-worker run KIND --spec JSON: the lanes parser completes a partial spec (its defaults and
# rules, one copy for lanes files and the worker), and refuses an unknown key (with a hint), a
# resource key and a rule it breaks, naming the key, before any work starts. The completed spec
# is printed and runs; the quantized model equals the one from the spec written out in full.
. "$(dirname "$0")/lib.sh"
MODEL=$SRC/tests/data/tiny-exaone4
W=$BIN/exaq-worker
[ -f "$MODEL/model.safetensors" ] || {
    echo "SKIP tests/data/tiny-exaone4 missing"
    exit 77
}

expect_rc 1 "$W" run quantize --input "$MODEL" --output "$T/a" --spec '{"method":"rtn","act_order":"static"}'
grep -q "unknown key 'act_order'" "$ERR" || fail "unknown key not named: $(cat "$ERR")"
grep -q "actorder" "$ERR" || fail "no hint: $(cat "$ERR")"
[ ! -e "$T/a" ] || fail "a refused spec left an output dir"
expect_rc 1 "$W" run quantize --input "$MODEL" --output "$T/a" --spec '{"method":"rtn","retries":2}'
grep -q "'retries' is a resource" "$ERR" || fail "resource key accepted: $(cat "$ERR")"
expect_rc 1 "$W" run quantize --input "$MODEL" --output "$T/a" --spec '{"method":"rtn","scheme":"W8A16","group_size":64}'
grep -q "group_size" "$ERR" || fail "rule not checked: $(cat "$ERR")"
expect_rc 1 "$W" run quantize --input "$MODEL" --output "$T/a" --spec '{"method":"rtn"'
expect_rc 1 "$W" run nosuch --input "$MODEL" --output "$T/a" --spec '{}'
grep -q "unknown stage kind 'nosuch'" "$ERR" || grep -q "nosuch" "$ERR" || fail "bad kind: $(cat "$ERR")"

# A partial spec is completed with the parser's defaults and printed.
expect_rc 0 "$W" run quantize --input "$MODEL" --output "$T/a" --threads 2 --spec '{"method":"rtn","scheme":"W8A16"}'
grep -q 'quantize spec {"group_size":-1,"ignore":\["lm_head"\],"method":"rtn","scheme":"W8A16"}' "$ERR" ||
    fail "completed spec not printed: $(cat "$ERR")"
expect_rc 0 "$W" run quantize --input "$MODEL" --output "$T/b" --threads 2 \
    --spec '{"group_size":-1,"ignore":["lm_head"],"method":"rtn","scheme":"W8A16"}'
cmp "$T/a/model/model.safetensors" "$T/b/model/model.safetensors" || fail "partial and full spec differ"

# Every eval kind's completed spec passes the worker's own check: an mcqa_gen without few-shot
# items (whose num_fewshot default belongs to fewshot) runs.
expect_rc 0 "$W" run mcqa_gen --input "$MODEL" --threads 2 \
    --spec "{\"items\":\"$SRC/tests/data/evals/mcqa_gen.jsonl\",\"chat\":false,\"max_new_tokens\":4}"
grep -q '"mcqa_gen_n": *8' "$OUT" || fail "mcqa_gen without fewshot: $(cat "$OUT" "$ERR")"
expect_rc 1 "$W" run mcqa_gen --input "$MODEL" --threads 2 \
    --spec "{\"items\":\"$SRC/tests/data/evals/mcqa_gen.jsonl\",\"num_fewshot\":2}"
grep -q "needs 'fewshot" "$ERR" || fail "num_fewshot without fewshot accepted: $(cat "$ERR")"
echo "ok"
