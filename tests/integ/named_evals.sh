# Named evals end to end: a real exaqd runs a sweep on the tiny test model with two ppl evals
# named val and calib over different files, scored on val.ppl. rank --json, --csv and --md report
# both val.ppl and calib.ppl (and the .nll_mean of each) for the baseline and the lane, with no
# unprefixed ppl, and each value equals `exaq-worker run ppl` on that file alone. A lanes file
# whose two evals would write the same metric, or with a bad name, is refused at submit with its
# file:line:col (tests/integ/badlanes.sh has more cases).
# Takes about 10 s on 2 cores.
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
sweep: named-evals
base_model: $MODEL
eval:
  - ppl: {name: val, ids: $DATA/val.ids.u32, seq_len: 64, max_windows: 4}
  - ppl: {name: calib, text: $DATA/calib.txt, seq_len: 64, max_windows: 3}
score:
  perf: [{metric: val.ppl, higher_is_better: false, weight: 1}]
  weights: {perf: 1, speed: 0}
package: {top: 0}
defaults: {retries: 0, timeout_min: 5, gpus: 0}
lanes:
  - id: copy
    stages:
      - exec: {run: "cp -R {input}/. {output}/"}
YAML

start_daemon --slots 2
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 300
expect_rc 0 ctl rank "$S" --json
cp "$OUT" "$T/rank.json"
jq -e '.lanes[0].rank == 1' "$T/rank.json" >/dev/null ||
    fail "the lane is not ranked: $(jq -c .lanes "$T/rank.json")"

# Each file evaluated alone, by the worker, outside any sweep.
W="$BIN/exaq-worker"
expect_rc 0 "$W" run ppl --input "$MODEL" --threads 2 \
    --spec "{\"ids\":\"$DATA/val.ids.u32\",\"seq_len\":64,\"max_windows\":4}"
cp "$OUT" "$T/val.json"
expect_rc 0 "$W" run ppl --input "$MODEL" --threads 2 \
    --spec "{\"text\":\"$DATA/calib.txt\",\"seq_len\":64,\"max_windows\":3}"
cp "$OUT" "$T/calib.json"
v=$(jq .ppl "$T/val.json") c=$(jq .ppl "$T/calib.json")
awk -v a="$v" -v b="$c" 'BEGIN { exit !(a > 1 && b > 1 && a != b) }' ||
    fail "the two files should give different perplexities: val $v, calib $c"

# Equal up to the last bit of the shortest round-trip print (jq may keep the decimal text).
for who in .baseline '.lanes[0]'; do
    jq -e --slurpfile vj "$T/val.json" --slurpfile cj "$T/calib.json" \
        "def eq(a; b): ((a - b) | fabs) <= 1e-15 * (b | fabs);
         $who.metrics as \$m | eq(\$m[\"val.ppl\"]; \$vj[0].ppl) and eq(\$m[\"calib.ppl\"]; \$cj[0].ppl) and
         eq(\$m[\"val.nll_mean\"]; \$vj[0].nll_mean) and eq(\$m[\"calib.nll_mean\"]; \$cj[0].nll_mean) and
         \$m[\"val.eval_tokens\"] == 256 and \$m[\"calib.eval_tokens\"] == 192 and
         (\$m | has(\"ppl\") | not)" "$T/rank.json" >/dev/null ||
        fail "$who metrics: $(jq -c "$who.metrics" "$T/rank.json"), alone: val $v calib $c"
done
# The copy is the baseline's model: PerfNorm 1 on val.ppl.
jq -e '.lanes[0].perf_norm == 1' "$T/rank.json" >/dev/null || fail "perf_norm: $(jq -c .lanes "$T/rank.json")"

expect_rc 0 ctl rank "$S" --csv
head -1 "$OUT" | tr ',' '\n' >"$T/cols"
for col in val.ppl calib.ppl val.nll_mean calib.nll_mean; do
    grep -qx "$col" "$T/cols" || fail "rank --csv has no column $col: $(head -1 "$OUT")"
done
! grep -qx ppl "$T/cols" || fail "rank --csv has an unprefixed ppl column: $(head -1 "$OUT")"
expect_rc 0 ctl rank "$S" --md
grep -q "val.ppl" "$OUT" && grep -q "calib.ppl" "$OUT" || fail "rank --md: $(cat "$OUT")"

# Two unnamed ppl evals both write ppl: refused, at the second one.
cat >"$T/w/clash.yaml" <<YAML
version: 1
sweep: clash
base_model: $MODEL
eval:
  - ppl: {ids: $DATA/val.ids.u32}
  - ppl: {text: $DATA/calib.txt}
lanes:
  - {id: a, stages: [{exec: {run: "cp -R {input}/. {output}/"}}]}
YAML
expect_rc 1 ctl submit "$T/w/clash.yaml"
grep -q "^$T/w/clash.yaml:6:5: error: eval 'eval.ppl-2' would write metric 'ppl', which eval 'eval.ppl' (line 5) also writes" "$ERR" ||
    fail "clash: $(cat "$ERR")"
echo "named evals ok"
