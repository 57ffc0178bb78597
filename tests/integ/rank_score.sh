# Ranking: a sweep whose eval exec stage writes known metrics per lane (each lane's pipeline
# leaves an m.json in its model; the eval copies it, the baseline gets fixed values). The test
# recomputes every score from the same inputs with awk and checks rank --json to 1e-9, the
# order, the clamp at 0, a lane missing a metric (status done, rank null, reason), a failed
# lane (rank null, reason), that --csv and --md carry the same numbers, the files written
# when the sweep ends (rank.csv, report.md, report.html), and the on_fail hook's environment.
# A second sweep whose baseline lacks a metric makes rank exit 1 naming the problem.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
fake_model "$T/w/base"

# lane ppl acc time_per_token (the baseline: ppl 10, acc 0.5, time_per_token 0.02)
cat >"$T/inputs" <<'EOF'
a 11 0.48 0.01
b 10.5 0.52 0.015
c 40 0.2 0.05
f 9 0.55 0.012
g 12.25 0.61 0.0175
EOF
BP=10 BA=0.5 BT=0.02

{
    cat <<'YAML'
version: 1
sweep: rankscore
base_model: ./base
eval:
  - exec:
      run: "if [ -f {input}/m.json ]; then cp {input}/m.json {metrics}; else printf '{\"ppl\": 10, \"acc\": 0.5, \"time_per_token\": 0.02}' > {metrics}; fi"
score:
  perf: [{metric: ppl, higher_is_better: false, weight: 3}, {metric: acc, higher_is_better: true, weight: 1}]
  speed: {metric: time_per_token}
  weights: {perf: 0.6, speed: 0.4}
package: {top: 0}
defaults: {retries: 2, timeout_min: 2, gpus: 0}
on_finish: "env | grep '^EXAQ_' | sort > hook_finish.env"
on_fail: "env | grep '^EXAQ_' | sort > hook_fail.env; echo hook-output-line"
lanes:
YAML
    while read -r id ppl acc t; do
        printf '  - id: %s\n    stages:\n      - exec: {run: "cp {input}/config.json {output}/ && printf %s > {output}/m.json"}\n' \
            "$id" "'{\\\"ppl\\\": $ppl, \\\"acc\\\": $acc, \\\"time_per_token\\\": $t}'"
    done <"$T/inputs"
    cat <<'YAML'
  - id: d_noppl
    stages:
      - exec: {run: "cp {input}/config.json {output}/ && printf '{\"acc\": 0.7, \"time_per_token\": 0.001}' > {output}/m.json"}
  - id: e_fails
    stages:
      - exec: {run: "echo broken on purpose >&2; exit 3"}
YAML
} >"$T/w/lanes.yaml"

start_daemon --slots 2
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 120
expect_rc 0 ctl rank "$S" --json
cp "$OUT" "$T/rank.json"
jq -e . "$T/rank.json" >/dev/null || fail "rank --json is not JSON"

# Expected scores, computed here from the inputs: weights 3 and 1 normalise to 0.75 and 0.25.
awk -v bp=$BP -v ba=$BA -v bt=$BT '{
    perf = (3 / 4) * (bp / $2) + (1 / 4) * ($3 / ba); speed = 1 - $4 / bt
    s = 0.6 * perf + 0.4 * speed; if (s < 0) s = 0
    printf "%s %.17g %.17g %.17g\n", $1, s, perf, speed }' "$T/inputs" >"$T/expected"
sort -k2,2gr "$T/expected" | awk '{print $1}' | tr '\n' ' ' >"$T/order.want"

# The section 5 object.
jq -e --arg s "$S" '.sweep == $s and (.baseline.metrics | .ppl == 10 and .acc == 0.5 and
    .time_per_token == 0.02) and (.lanes | length == 7) and (.lanes | map(.lane) | index("baseline") == null)' \
    "$T/rank.json" >/dev/null || fail "rank document shape: $(cat "$T/rank.json")"
jq -e '.lanes[] | has("lane") and has("rank") and has("status") and has("score") and
    has("perf_norm") and has("speed_norm") and has("metrics") and has("size_bytes")' "$T/rank.json" \
    >/dev/null || fail "a lane lacks a section 5 key"
while read -r id s p v; do
    jq -e --arg l "$id" --argjson s "$s" --argjson p "$p" --argjson v "$v" '
        .lanes[] | select(.lane == $l) | .status == "done" and (.rank | type) == "number" and
        ((.score - $s) | fabs) <= 1e-9 and ((.perf_norm - $p) | fabs) <= 1e-9 and
        ((.speed_norm - $v) | fabs) <= 1e-9' "$T/rank.json" >/dev/null ||
        fail "lane $id: want score $s perf $p speed $v, got $(jq -c --arg l "$id" '.lanes[] | select(.lane == $l)' "$T/rank.json")"
done <"$T/expected"
# Lane c's raw score is negative: it is clamped to exactly 0.
jq -e '.lanes[] | select(.lane == "c") | .score == 0' "$T/rank.json" >/dev/null || fail "c not clamped to 0"
# Order: ranked lanes by descending score with ranks 1..5, then the unranked ones.
got=$(jq -r '[.lanes[] | select(.rank != null) | .lane] | join(" ")' "$T/rank.json")
[ "$got " = "$(cat "$T/order.want")" ] || fail "order: got '$got', want '$(cat "$T/order.want")'"
jq -e '[.lanes[] | .rank] == [1, 2, 3, 4, 5, null, null]' "$T/rank.json" >/dev/null ||
    fail "ranks: $(jq -c '[.lanes[].rank]' "$T/rank.json")"
jq -e '.lanes[] | select(.lane == "d_noppl") | .status == "done" and .rank == null and
    .score == null and (.reason | test("missing metric .ppl."))' "$T/rank.json" >/dev/null ||
    fail "d_noppl: $(jq -c '.lanes[] | select(.lane == "d_noppl")' "$T/rank.json")"
jq -e '.lanes[] | select(.lane == "e_fails") | .status == "failed" and .rank == null and
    (.reason | test("status 3"))' "$T/rank.json" >/dev/null ||
    fail "e_fails: $(jq -c '.lanes[] | select(.lane == "e_fails")' "$T/rank.json")"

# --csv carries the same numbers (header names the columns).
expect_rc 0 ctl rank "$S" --csv
cp "$OUT" "$T/rank.csv"
check_table() { # FILE SEP: rows "lane score perf speed" parsed back, compared with the JSON
    awk -F"$2" -v md="$3" 'NR == 1 { for (i = 1; i <= NF; i++) { h = $i; gsub(/ /, "", h); col[h] = i } next }
        md && $0 ~ /^\|---/ { next }
        { l = $col["lane"]; s = $col["score"]; p = $col["perf_norm"]; v = $col["speed_norm"]
          gsub(/ /, "", l); gsub(/ /, "", s); gsub(/ /, "", p); gsub(/ /, "", v)
          if (l != "baseline") print l, (s == "" ? "null" : s), (p == "" ? "null" : p), (v == "" ? "null" : v) }' "$1"
}
check_table "$T/rank.csv" "," "" >"$T/csv.rows"
[ "$(wc -l <"$T/csv.rows")" -eq 7 ] || fail "csv rows: $(cat "$T/rank.csv")"
check_against_json() {
    while read -r l s p v; do
        jq -e --arg l "$l" --argjson s "$s" --argjson p "$p" --argjson v "$v" '
            .lanes[] | select(.lane == $l) |
            (if $s == null then .score == null else ((.score - $s) | fabs) <= 1e-9 end) and
            (if $p == null then .perf_norm == null else ((.perf_norm - $p) | fabs) <= 1e-9 end) and
            (if $v == null then .speed_norm == null else ((.speed_norm - $v) | fabs) <= 1e-9 end)' \
            "$T/rank.json" >/dev/null || fail "$1 row of $l ($s $p $v) differs from the JSON"
    done <"$2"
    [ "$(awk '{print $1}' "$2" | tr '\n' ' ')" = "$(jq -r '[.lanes[].lane] | join(" ")' "$T/rank.json") " ] ||
        fail "$1 lane order differs from the JSON"
}
check_against_json csv "$T/csv.rows"
# --md: the same, parsed back from the Markdown table.
expect_rc 0 ctl rank "$S" --md
sed -e 's/^| //' -e 's/ |$//' "$OUT" >"$T/rank.md"
check_table "$T/rank.md" " [|] " 1 >"$T/md.rows"
[ "$(wc -l <"$T/md.rows")" -eq 7 ] || fail "md rows: $(cat "$OUT")"
check_against_json md "$T/md.rows"
grep -q '^| - | baseline | done |' "$OUT" || fail "md lacks the baseline row"
expect_rc 0 ctl rank "$S"
grep -q "d_noppl" "$OUT" && grep -q "missing metric 'ppl'" "$OUT" || fail "table: $(cat "$OUT")"

# Files written when the sweep ended: rank.csv is what rank --csv prints.
D=$EXAQ_HOME/sweeps/$S
cmp -s "$D/rank.csv" "$T/rank.csv" || fail "rank.csv differs from rank --csv"
grep -q "missing metric 'ppl'" "$D/report.md" || fail "report.md lacks the missing-metric reason"
grep -q "e_fails (failed)" "$D/report.md" || fail "report.md lacks the failed lane"
# report.html: one self-contained file with SVG charts and every lane.
H=$D/report.html
[ "$(grep -c '<svg' "$H")" -ge 2 ] || fail "report.html has fewer than 2 charts"
grep -q 'score vs time_per_token' "$H" && grep -q 'score vs model size' "$H" || fail "chart titles"
grep -q 'class="baseline"' "$H" || fail "the baseline is not marked"
! grep -qE 'https?://' "$H" || fail "report.html references the network: $(grep -oE 'https?://[^"]*' "$H" | head -3)"
! grep -qiE '<(script|link|img|iframe)' "$H" || fail "report.html pulls in other files"
for l in a b c f g d_noppl e_fails; do
    grep -q ">$l<" "$H" || fail "report.html lacks lane $l"
done

# Hooks: a lane failed, so on_fail ran (not on_finish), in the lanes file's dir, with the env.
[ -f "$T/w/hook_fail.env" ] || fail "on_fail did not run: $(cat "$D/hooks.log" 2>/dev/null)"
[ ! -f "$T/w/hook_finish.env" ] || fail "on_finish ran although a lane failed"
grep -qx "EXAQ_SWEEP=$S" "$T/w/hook_fail.env" || fail "hook env: $(cat "$T/w/hook_fail.env")"
grep -qx "EXAQ_STATUS=failed" "$T/w/hook_fail.env" || fail "hook status: $(cat "$T/w/hook_fail.env")"
grep -qx "EXAQ_REPORT=$D/report.md" "$T/w/hook_fail.env" || fail "hook report path"
grep -qx "EXAQ_HOME=$EXAQ_HOME" "$T/w/hook_fail.env" || fail "hook home"
grep -q "hook-output-line" "$D/hooks.log" && grep -q "on_fail exited with status 0" "$D/hooks.log" ||
    fail "hooks.log: $(cat "$D/hooks.log")"
jq -e '.hook.name == "on_fail" and .hook.ok' "$T/rank.json" >/dev/null || fail "hook outcome not in rank"

# A baseline that lacks a metric: rank exits 1 and names the problem; the report says so.
mkdir -p "$T/w2"
fake_model "$T/w2/base"
cat >"$T/w2/lanes.yaml" <<'YAML'
version: 1
sweep: rankbase
base_model: ./base
eval:
  - exec: {run: "printf '{\"time_per_token\": 0.02}' > {metrics}"}
defaults: {retries: 2, timeout_min: 2, gpus: 0}
on_fail: "echo $EXAQ_STATUS > status.txt"
lanes:
  - id: only
    stages:
      - exec: {run: "cp {input}/config.json {output}/"}
YAML
expect_rc 0 ctl submit "$T/w2/lanes.yaml"
S2=$(cat "$OUT")
expect_rc 0 ctl wait "$S2" --timeout 60
expect_rc 1 ctl rank "$S2" --json
grep -q "baseline lacks metric 'ppl'" "$ERR" || fail "baseline error: $(cat "$ERR")"
grep -q "Ranking failed.*baseline lacks metric 'ppl'" "$EXAQ_HOME/sweeps/$S2/report.md" ||
    fail "report.md of $S2: $(cat "$EXAQ_HOME/sweeps/$S2/report.md")"
[ "$(cat "$T/w2/status.txt")" = failed ] || fail "baseline problem did not run on_fail"
expect_rc 1 ctl package "$S2"
grep -q "baseline lacks metric" "$ERR" || fail "package error: $(cat "$ERR")"
expect_rc 1 ctl rank nosuchsweep
echo "rank_score ok: $S"
