# Acceptance: two lanes with an identical first stage run it once; submitting the same file
# again succeeds, prints the sweep id and runs nothing new. Executions are counted in files.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
fake_model "$T/w/base"
cat >"$T/w/lanes.yaml" <<'YAML'
version: 1
sweep: reuse
base_model: ./base
eval:
  - exec: {run: "echo eval >> runs.eval; printf '{\"m\": 1}' > {metrics}"}
defaults: {retries: 0}
lanes:
  - id: one
    stages:
      - exec: {run: "echo first >> runs; cp -R {input}/. {output}/"}
      - exec: {run: "echo second-one >> runs; cp -R {input}/. {output}/; echo 1 > {output}/one"}
  - id: two
    stages:
      - exec: {run: "echo first >> runs; cp -R {input}/. {output}/"}
      - exec: {run: "echo second-two >> runs; cp -R {input}/. {output}/; echo 2 > {output}/two"}
YAML
start_daemon --slots 2
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 60
[ "$(grep -c '^first$' "$T/w/runs")" -eq 1 ] || fail "shared first stage ran $(grep -c '^first$' "$T/w/runs") times"
[ "$(grep -c '^second-one$' "$T/w/runs")" -eq 1 ] || fail "second-one count"
[ "$(grep -c '^second-two$' "$T/w/runs")" -eq 1 ] || fail "second-two count"
[ "$(wc -l <"$T/w/runs.eval")" -eq 3 ] || fail "eval ran $(wc -l <"$T/w/runs.eval") times, want 3"
status_json "$S" >"$T/st.json"
k1=$(jq -r '.sweeps[0].lanes[] | select(.id == "one") | .stages[0].key' "$T/st.json")
k2=$(jq -r '.sweeps[0].lanes[] | select(.id == "two") | .stages[0].key' "$T/st.json")
[ "$k1" = "$k2" ] || fail "identical stages got different keys"

# The same file again: exit 0, the same id, nothing new runs.
cp "$T/w/runs" "$T/runs.before"
expect_rc 0 ctl submit "$T/w/lanes.yaml"
[ "$(cat "$OUT")" = "$S" ] || fail "resubmit printed '$(cat "$OUT")', want '$S'"
sleep 1
cmp -s "$T/w/runs" "$T/runs.before" || fail "resubmitting ran stages again"
[ "$(wc -l <"$T/w/runs.eval")" -eq 3 ] || fail "resubmitting ran evals again"
status_json >"$T/all.json"
[ "$(jq '.sweeps | length' "$T/all.json")" -eq 1 ] || fail "resubmit created another sweep"

# A different file that shares the first stage reuses it from the cache (another sweep).
sed -e 's/^sweep: reuse/sweep: reuse2/' -e 's/second-two/second-three/' "$T/w/lanes.yaml" >"$T/w/lanes2.yaml"
expect_rc 0 ctl submit "$T/w/lanes2.yaml"
S2=$(cat "$OUT")
[ "$S2" != "$S" ] || fail "a different file got the same sweep id"
expect_rc 0 ctl wait "$S2" --timeout 60
[ "$(grep -c '^first$' "$T/w/runs")" -eq 1 ] || fail "cached first stage ran again"
[ "$(grep -c '^second-one$' "$T/w/runs")" -eq 1 ] || fail "cached second-one ran again"
[ "$(grep -c '^second-three$' "$T/w/runs")" -eq 1 ] || fail "new stage did not run once"
status_json "$S2" >"$T/st2.json"
jq -e '.sweeps[0].lanes[] | select(.id == "one") | .stages[0].reused' "$T/st2.json" >/dev/null ||
    fail "reused stage not marked reused"

# --rerun ignores the cache: everything runs again, in a new sweep.
expect_rc 0 ctl submit --rerun "$T/w/lanes.yaml"
S3=$(cat "$OUT")
[ "$S3" != "$S" ] || fail "--rerun reused the sweep id"
expect_rc 0 ctl wait "$S3" --timeout 60
[ "$(grep -c '^first$' "$T/w/runs")" -eq 2 ] || fail "--rerun did not run the first stage again"

# An artifact removed by hand (or by gc) is made again when another sweep needs it.
rm -rf "$EXAQ_HOME/artifacts/$k1"
sed -e 's/^sweep: reuse/sweep: reuse4/' "$T/w/lanes.yaml" >"$T/w/lanes4.yaml"
expect_rc 0 ctl submit "$T/w/lanes4.yaml"
expect_rc 0 ctl wait "$(cat "$OUT")" --timeout 60
[ "$(grep -c '^first$' "$T/w/runs")" -eq 3 ] || fail "a stage whose artifact is gone was not re-run"
[ -f "$EXAQ_HOME/artifacts/$k1/result.json" ] || fail "the artifact was not made again"
[ "$(grep -c '^second-one$' "$T/w/runs")" -eq 2 ] || fail "reuse4: second-one should run once more"
echo "reuse ok"
