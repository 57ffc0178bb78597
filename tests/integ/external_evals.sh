# The external-engine evals end to end: a real exaqd runs a sweep whose eval list is a named
# vllm_speed (vLLM's latency benchmark) and an lm_eval (lm-evaluation-harness), each through a
# fake command that behaves like the tool and writes the recorded output of tests/data/external/
# (the real formats) where the tool writes it. rank --json scores on arc_easy.acc and
# vllm.time_per_token and reports every imported metric for the baseline and the lane, with the
# values of the recorded files; the raw latencies stay in the stage's artifact. Then a sweep
# whose tool is not installed fails its eval stage at once: class error, one attempt although
# retries is 2, and a message naming the command.
# Takes about 5 s.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null || {
    echo "SKIP jq missing"
    exit 77
}
X=$SRC/tests/data/external
mkdir -p "$T/w"
fake_model "$T/w/base"
cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: external
base_model: ./base
eval:
  - vllm_speed: {name: vllm, command: "$X/fake_vllm.sh bench latency", output_len: 128, num_iters: 5}
  - lm_eval: {command: "$X/fake_lm_eval.sh", model: vllm, tasks: [arc_easy, gsm8k, kmmlu], limit: 400}
score:
  perf: [{metric: arc_easy.acc, higher_is_better: true, weight: 1}]
  speed: {metric: vllm.time_per_token}
package: {top: 0}
defaults: {retries: 0, timeout_min: 5, gpus: 0}
lanes:
  - id: copy
    stages:
      - exec: {run: "cp -R {input}/. {output}/"}
YAML
start_daemon
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 120
expect_rc 0 ctl rank "$S" --json
cp "$OUT" "$T/rank.json"
# Equal to 1e-12 (the protocol carries numbers in decimal).
for who in .baseline '.lanes[0]'; do
    jq -e "def eq(a; b): ((a - b) | fabs) <= 1e-12 * (b | fabs);
           $who.metrics as \$m | eq(\$m[\"vllm.time_per_token\"]; 0.5612408 / 128) and
           eq(\$m[\"vllm.latency_avg\"]; 0.56167496) and eq(\$m[\"vllm.latency_p99\"]; 0.564841596) and
           \$m[\"vllm.vllm_iters\"] == 5 and eq(\$m[\"arc_easy.acc\"]; 0.7487373737373737) and
           eq(\$m[\"gsm8k.exact_match_strict_match\"]; 0.4025) and eq(\$m[\"kmmlu_accounting.acc\"]; 0.34) and
           (\$m | length) == 23 and (\$m | has(\"time_per_token\") | not)" "$T/rank.json" >/dev/null ||
        fail "$who metrics: $(jq -c "$who.metrics" "$T/rank.json")"
done
jq -e '.lanes[0].rank == 1 and .lanes[0].perf_norm == 1 and .lanes[0].speed_norm == 0' "$T/rank.json" >/dev/null ||
    fail "the copy's score: $(jq -c '.lanes[0] | {rank, perf_norm, speed_norm, reason}' "$T/rank.json")"
# The raw latencies: the benchmark's own JSON is kept with the stage's artifact.
status_json "$S" >"$T/st.json"
key=$(jq -r '.sweeps[0].lanes[] | select(.id == "copy") | .stages[] | select(.name == "eval.vllm_speed") | .key' "$T/st.json")
[ -n "$key" ] && [ "$key" != null ] || fail "no vllm_speed stage key: $(jq -c '.sweeps[0].lanes[0].stages' "$T/st.json")"
cmp -s "$EXAQ_HOME/artifacts/$key/vllm_latency.json" "$X/vllm_latency.json" ||
    fail "the artifact does not keep the latency JSON: $(ls "$EXAQ_HOME/artifacts/$key")"

# Not installed: a deterministic error, not retried.
cat >"$T/w/missing.yaml" <<YAML
version: 1
sweep: missing
base_model: ./base
eval:
  - lm_eval: {command: exaq-no-such-lm-eval, tasks: [arc_easy]}
defaults: {retries: 2, timeout_min: 5, gpus: 0}
lanes:
  - {id: a, stages: [{exec: {run: "cp -R {input}/. {output}/"}}]}
YAML
expect_rc 0 ctl submit "$T/w/missing.yaml"
S2=$(cat "$OUT")
expect_rc 0 ctl wait "$S2" --timeout 60 || true
status_json "$S2" >"$T/st2.json"
ev() { jq -r --arg l "$1" ".sweeps[0].lanes[] | select(.id == \$l) | .stages[] | select(.name == \"eval.lm_eval\") | $2" "$T/st2.json"; }
[ "$(ev baseline .state)" = failed ] || fail "missing tool: stage $(ev baseline .state)"
[ "$(ev baseline .error.class)" = error ] || fail "missing tool class: $(ev baseline .error.class)"
ev baseline .error.msg | grep -q "lm_eval: the command 'exaq-no-such-lm-eval' is not installed" ||
    fail "missing tool msg: $(ev baseline .error.msg)"
[ "$(ev baseline '.history | length')" = 1 ] || fail "a missing tool was retried: $(ev baseline .history)"
echo "external evals ok"
