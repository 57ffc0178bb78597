# exaq-worker tokenize against the HF `tokenizers` goldens: the EXAONE-4 tokenizer of tiny-a on
# its 1.5 MB val.txt (val.ids.u32), and the SentencePiece-style BPE (spm-bpe-legacy) and
# Llama-3-style byte-level BPE of tests/data/tokenizers/ on the 1.2 MB mixed.txt: the ids equal
# the library's, and decoding them back gives the library's decode. Then the errors for bad
# input. Takes a few seconds.
. "$(dirname "$0")/lib.sh"
W="$BIN/exaq-worker"
D=$SRC/tests/data/tokenizers
command -v unzip >/dev/null || {
    echo "SKIP unzip missing"
    exit 77
}

# EXAONE-4 (byte-level BPE) through --input, as the stages load it.
expect_rc 0 "$W" tokenize --input "$SRC/tests/data/tiny-exaone4" \
    --text "$SRC/tests/data/tiny-a/val.txt" --out "$T/val.u32"
cmp "$T/val.u32" "$SRC/tests/data/tiny-a/val.ids.u32" || fail "tiny-a val.txt ids differ"
expect_rc 0 "$W" tokenize --input "$SRC/tests/data/tiny-exaone4" --ids "$T/val.u32" \
    --out "$T/val.txt"
cmp "$T/val.txt" "$SRC/tests/data/tiny-a/val.txt" || fail "tiny-a val.txt does not round-trip"

unzip -p "$D/mixed.zip" mixed.txt >"$T/mixed.txt"
[ "$(wc -c <"$T/mixed.txt")" -ge 1000000 ] || fail "mixed.txt is under 1 MB"
for fam in spm-bpe-legacy llama3; do
    unzip -p "$D/$fam/golden.zip" ids.u32 >"$T/$fam.want.u32"
    unzip -p "$D/$fam/golden.zip" decoded.txt >"$T/$fam.want.txt"
    expect_rc 0 "$W" tokenize --tokenizer "$D/$fam/tokenizer.json" --text "$T/mixed.txt" \
        --out "$T/$fam.u32"
    cmp "$T/$fam.u32" "$T/$fam.want.u32" || fail "$fam: ids differ from the library's"
    expect_rc 0 "$W" tokenize --tokenizer "$D/$fam/tokenizer.json" --ids "$T/$fam.u32" \
        --out "$T/$fam.txt"
    cmp "$T/$fam.txt" "$T/$fam.want.txt" || fail "$fam: decode differs from the library's"
done
# Decode to stdout.
printf '\001\000\000\000' >"$T/one.u32"
expect_rc 0 "$W" tokenize --tokenizer "$D/spm-bpe-legacy/tokenizer.json" --ids "$T/one.u32"
[ "$(cat "$OUT")" = "<s>" ] || fail "id 1 decodes to '$(cat "$OUT")', not <s>"

# Errors name the problem.
expect_rc 1 "$W" tokenize --tokenizer "$D/llama3/tokenizer.json" --text "$T/mixed.txt"
grep -q "out with --text" "$ERR" || fail "no message for a missing --out"
expect_rc 1 "$W" tokenize --input "$T" --text "$T/mixed.txt" --out "$T/x"
grep -q "has no tokenizer.json" "$ERR" || fail "no message for a dir without tokenizer.json"
printf '{"model":{"type":"WordPiece","vocab":{}}}' >"$T/wp.json"
expect_rc 1 "$W" tokenize --tokenizer "$T/wp.json" --text "$T/mixed.txt" --out "$T/x"
grep -q "only BPE and Unigram are supported" "$ERR" || fail "no message naming the model type"
printf 'ab\377' >"$T/bad.txt"
expect_rc 1 "$W" tokenize --tokenizer "$D/llama3/tokenizer.json" --text "$T/bad.txt" --out "$T/x"
grep -q "not valid UTF-8" "$ERR" || fail "no message for invalid UTF-8"
printf 'abc' >"$T/bad.u32"
expect_rc 1 "$W" tokenize --tokenizer "$D/llama3/tokenizer.json" --ids "$T/bad.u32"
grep -q "not a multiple of 4" "$ERR" || fail "no message for a bad ids file"
echo "ok tokenize_cli"
