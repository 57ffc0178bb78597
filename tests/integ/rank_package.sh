# Packaging: five lanes whose models are real (copies of tests/data/tiny-exaone4, each with a
# different last byte of model.safetensors so the models differ). The best lane's safetensors
# header length is overwritten with a huge number: it is skipped with the reason in rank --json
# and report.md, and the next lanes take its place. Checks submit_top1..3.zip (unzip -t, only
# stored model/... entries including config.json, model.safetensors and tokenizer.json, the
# files of the lane ranked there byte for byte), no fourth zip, the on_finish hook, package
# --top 1 --out DIR, a repackage with --top 2 removing the stale third package, and tiny
# max_unzipped_gb / max_zip_gb limits that make every lane fail packaging with a size reason.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
cp -R "$SRC/tests/data/tiny-exaone4" "$T/w/base"
[ -f "$T/w/base/tokenizer_config.json" ] || fail "test model lacks tokenizer_config.json"

# mk.sh IN OUT BYTE PPL TPT [corrupt]: copy the model, set its last weight byte, leave the
# metrics the eval stage reports in q.json, and optionally break the safetensors header.
cat >"$T/w/mk.sh" <<'EOF'
set -e
cp -R "$1/." "$2/"
f="$2/model.safetensors"
n=$(wc -c <"$f")
printf "\\$(printf %03o "$3")" | dd of="$f" bs=1 seek=$((n - 1)) conv=notrunc 2>/dev/null
printf '{"ppl": %s, "time_per_token": %s}\n' "$4" "$5" >"$2/q.json"
if [ "${6:-}" = corrupt ]; then
    printf '\377\377\377\377\377\377\377\177' | dd of="$f" bs=1 count=8 conv=notrunc 2>/dev/null
fi
EOF
lanes_file() { # NAME PACKAGE-BLOCK
    cat <<YAML
version: 1
sweep: $1
base_model: ./base
eval:
  - exec: {run: "if [ -f {input}/q.json ]; then cp {input}/q.json {metrics}; else printf '{\"ppl\": 10, \"time_per_token\": 0.02}' > {metrics}; fi"}
package: $2
defaults: {retries: 2, timeout_min: 2, gpus: 0}
on_finish: "env | grep '^EXAQ_' | sort > $1.finish.env"
on_fail: "echo ran > $1.fail.txt"
lanes:
  - id: l1_corrupt
    stages: [{exec: {run: "sh mk.sh {input} {output} 65 8 0.008 corrupt"}}]
  - id: l2
    stages: [{exec: {run: "sh mk.sh {input} {output} 66 9 0.01"}}]
  - id: l3
    stages: [{exec: {run: "sh mk.sh {input} {output} 67 10 0.012"}}]
  - id: l4
    stages: [{exec: {run: "sh mk.sh {input} {output} 68 11 0.014"}}]
  - id: l5
    stages: [{exec: {run: "sh mk.sh {input} {output} 69 12 0.016"}}]
YAML
}
lanes_file rankpkg "{top: 3, max_zip_gb: 1, max_unzipped_gb: 1}" >"$T/w/lanes.yaml"
start_daemon --slots 2
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 180
expect_rc 0 ctl rank "$S" --json
cp "$OUT" "$T/rank.json"
D=$EXAQ_HOME/sweeps/$S
SUB=$D/submissions

# Ranking: l1 > l2 > l3 > l4 > l5 (0.5*10/ppl + 0.5*(1 - t/0.02)).
[ "$(jq -r '[.lanes[] | .lane] | join(" ")' "$T/rank.json")" = "l1_corrupt l2 l3 l4 l5" ] ||
    fail "order: $(jq -c '[.lanes[] | [.lane, .score]]' "$T/rank.json")"
# The corrupt lane is ranked but not packaged; its reason is in rank and in the report.
jq -e '.lanes[0] | .rank == 1 and .package.ok == false and
    (.package.reason | test("^invalid safetensors file: model.safetensors: header length"))' "$T/rank.json" >/dev/null ||
    fail "corrupt lane: $(jq -c '.lanes[0]' "$T/rank.json")"
grep -q "l1_corrupt: not packaged: invalid safetensors file: model.safetensors: header" "$D/report.md" ||
    fail "report.md lacks the corrupt lane's reason: $(cat "$D/report.md")"
grep -q "l1_corrupt: not packaged: invalid safetensors" "$D/report.html" || fail "report.html lacks it"
jq -e '[.lanes[] | .package.top] == [null, 1, 2, 3, null] and
    (.lanes[4] | has("package") | not) and .package.packaged == 3' "$T/rank.json" >/dev/null ||
    fail "package tops: $(jq -c '[.lanes[] | .package]' "$T/rank.json")"

# Exactly three packages, no fourth zip, nothing temporary left.
[ "$(ls "$SUB" | tr '\n' ' ')" = "submit_top1.zip submit_top2.zip submit_top3.zip top1 top2 top3 " ] ||
    fail "submissions dir: $(ls "$SUB")"
want_lane() { jq -r --argjson n "$1" '.lanes[] | select(.package.top == $n) | .lane' "$T/rank.json"; }
for n in 1 2 3; do
    z=$SUB/submit_top$n.zip
    unzip -tq "$z" >/dev/null || fail "unzip -t $z"
    zipinfo -1 "$z" | sort >"$T/entries"
    ! grep -qv '^model/' "$T/entries" || fail "$z has entries outside model/: $(cat "$T/entries")"
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
        grep -qx "model/$f" "$T/entries" || fail "$z lacks model/$f"
    done
    nent=$(wc -l <"$T/entries")
    [ "$(unzip -v "$z" | grep -c ' Stored ')" -eq "$nent" ] || fail "$z: not every entry is stored: $(unzip -v "$z")"
    ! unzip -v "$z" | grep -q 'Defl' || fail "$z has deflated entries"
    # The zip holds the model of the lane ranked there, file for file.
    lane=$(want_lane $n)
    [ "$lane" = "l$((n + 1))" ] || fail "top$n is lane '$lane', want l$((n + 1))"
    md=$(jq -r --arg l "$lane" '.lanes[] | select(.lane == $l) | .model_dir' "$T/rank.json")
    [ "$(ls "$md" | sed 's|^|model/|' | sort | tr '\n' ' ')" = "$(tr '\n' ' ' <"$T/entries")" ] ||
        fail "$z entries differ from $md"
    for f in $(ls "$md"); do
        [ "$(unzip -p "$z" "model/$f" | sha256sum | cut -d' ' -f1)" = "$(sha256sum <"$md/$f" | cut -d' ' -f1)" ] ||
            fail "$z: model/$f differs from lane $lane's model"
    done
    unzip -p "$z" model/model.safetensors | sha256sum | cut -d' ' -f1 >>"$T/zip.sums"
    cmp -s "$SUB/top$n/model/model.safetensors" "$md/model.safetensors" || fail "top$n/model is not lane $lane's model"
done
[ "$(sort -u "$T/zip.sums" | wc -l)" -eq 3 ] || fail "the three zips do not hold three different models"

# The on_finish hook ran (no lane failed) with the sweep id and status.
[ -f "$T/w/rankpkg.finish.env" ] || fail "on_finish did not run: $(cat "$D/hooks.log" 2>/dev/null)"
[ ! -f "$T/w/rankpkg.fail.txt" ] || fail "on_fail ran"
grep -qx "EXAQ_SWEEP=$S" "$T/w/rankpkg.finish.env" && grep -qx "EXAQ_STATUS=done" "$T/w/rankpkg.finish.env" ||
    fail "hook env: $(cat "$T/w/rankpkg.finish.env")"

# package --top 1 --out DIR writes the submissions layout under DIR only.
expect_rc 0 ctl package "$S" --top 1 --out "$T/pkgout"
grep -q "packaged 1 of the top 1" "$OUT" && grep -q "skipped  l1_corrupt" "$OUT" || fail "package output: $(cat "$OUT")"
[ "$(ls "$T/pkgout/submissions" | tr '\n' ' ')" = "submit_top1.zip top1 " ] || fail "--out: $(ls -R "$T/pkgout")"
unzip -tq "$T/pkgout/submissions/submit_top1.zip" >/dev/null || fail "unzip -t of --out zip"
cmp -s "$T/pkgout/submissions/submit_top1.zip" "$SUB/submit_top1.zip" ||
    [ "$(unzip -p "$T/pkgout/submissions/submit_top1.zip" model/model.safetensors | sha256sum)" = \
      "$(unzip -p "$SUB/submit_top1.zip" model/model.safetensors | sha256sum)" ] || fail "--out top1 differs"
[ -f "$SUB/submit_top3.zip" ] || fail "--out touched the sweep's own packages"
# Repackaging the sweep itself with --top 2 removes the third package.
expect_rc 0 ctl package "$S" --top 2
[ "$(ls "$SUB" | tr '\n' ' ')" = "submit_top1.zip submit_top2.zip top1 top2 " ] || fail "after --top 2: $(ls "$SUB")"
expect_rc 0 ctl rank "$S" --json
jq -e '.package.packaged == 2' "$OUT" >/dev/null || fail "rank does not show the repackage"
# Running sweeps and bad arguments are refused with exit 1.
expect_rc 1 ctl package nosuchsweep

# A tiny max_unzipped_gb: every lane fails packaging with a size reason (the stages are reused).
lanes_file rankpkg-tiny "{top: 3, max_zip_gb: 1, max_unzipped_gb: 0.000001}" >"$T/w/tiny.yaml"
expect_rc 0 ctl submit "$T/w/tiny.yaml"
S2=$(cat "$OUT")
expect_rc 0 ctl wait "$S2" --timeout 120
expect_rc 0 ctl rank "$S2" --json
jq -e '(.lanes | length) == 5 and ([.lanes[] | .package.ok] | all(. == false)) and
    ([.lanes[] | .package.reason | test("over max_unzipped_gb 1e-06")] | all) and .package.packaged == 0' "$OUT" \
    >/dev/null || fail "tiny max_unzipped_gb: $(jq -c '[.lanes[] | .package]' "$OUT")"
[ -z "$(ls "$EXAQ_HOME/sweeps/$S2/submissions")" ] || fail "tiny limit still wrote: $(ls "$EXAQ_HOME/sweeps/$S2/submissions")"
grep -q "over max_unzipped_gb" "$EXAQ_HOME/sweeps/$S2/report.md" || fail "report.md lacks the size reason"
expect_rc 1 ctl package "$S2" --top 1 --out "$T/pkgout2"
grep -q "over max_unzipped_gb" "$OUT" || fail "package output: $(cat "$OUT")"

# A tiny max_zip_gb: the zips are written, measured and thrown away.
lanes_file rankpkg-zip "{top: 2, max_zip_gb: 0.000001, max_unzipped_gb: 1}" >"$T/w/zip.yaml"
expect_rc 0 ctl submit "$T/w/zip.yaml"
S3=$(cat "$OUT")
expect_rc 0 ctl wait "$S3" --timeout 120
expect_rc 0 ctl rank "$S3" --json
jq -e '([.lanes[1:][] | .package.reason | test("over max_zip_gb 1e-06")] | all) and .package.packaged == 0' \
    "$OUT" >/dev/null || fail "tiny max_zip_gb: $(jq -c '[.lanes[] | .package]' "$OUT")"
[ -z "$(ls "$EXAQ_HOME/sweeps/$S3/submissions")" ] || fail "tiny zip limit left files"

# gc --keep best: keeps the top lanes' artifacts of the first sweep, removes the others'.
expect_rc 0 ctl gc "$S" --keep best
# Kept: the top 3 by rank (l1..l3, the same in every sweep) and the baseline; removed: the
# pipeline and eval dirs of l4 and l5 (the other sweeps that share them have finished).
grep -q "^removed 4 artifact dirs" "$OUT" || fail "gc output: $(cat "$OUT")"
for l in l4 l5; do
    md=$(jq -r --arg l $l '.lanes[] | select(.lane == $l) | .model_dir' "$T/rank.json")
    [ ! -e "$md" ] || fail "gc kept $l's model"
done
md=$(jq -r '.lanes[] | select(.lane == "l1_corrupt") | .model_dir' "$T/rank.json")
[ -d "$md" ] || fail "gc removed the rank-1 lane's model"
expect_rc 0 ctl gc "$S"
grep -q "^removed 0 artifact dirs" "$OUT" || fail "second gc: $(cat "$OUT")"
expect_rc 0 ctl rank "$S" --json
for n in 1 2; do
    md=$(jq -r --argjson n $n '.lanes[] | select(.package.top == $n) | .model_dir' "$T/rank.json")
    [ -f "$md/model.safetensors" ] || fail "gc removed a packaged lane's model ($md)"
done
unzip -tq "$SUB/submit_top1.zip" >/dev/null || fail "gc broke a package"
echo "rank_package ok: $S"
