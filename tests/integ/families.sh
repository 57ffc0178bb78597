# Acceptance (model families): `exaq-worker logits` and `exaq-worker generate` on each test model
# of tests/data/families (llama, qwen2, qwen3, mistral, minicpm) against the fp32 goldens of
# tests/tools/make_families.py (transformers, same BF16 weights): for both golden sequences
# max|diff| <= 1e-3 of max|logit| and the same argmax at >= 99% of positions; the 12 greedy
# tokens after the golden prompt equal. The goldens are read straight from golden.safetensors
# (its JSON header gives each tensor's byte range). Takes a few seconds.
. "$(dirname "$0")/lib.sh"
D=$SRC/tests/data/families
W=$EXAQ_BIN/exaq-worker
[ -f "$D/llama/golden.safetensors" ] || {
    echo "SKIP families data missing"
    exit 77
}
mkdir -p "$T/f"

# tensor FILE NAME OUT: the raw bytes of tensor NAME of safetensors FILE into OUT; prints its
# first dimension.
tensor() {
    hn=$(od -An -t u8 -N 8 "$1" | tr -d ' ')
    head -c $((8 + hn)) "$1" | tail -c "$hn" >"$T/f/hdr.json"
    b=$(jq -r --arg t "$2" '.[$t].data_offsets[0]' "$T/f/hdr.json")
    e=$(jq -r --arg t "$2" '.[$t].data_offsets[1]' "$T/f/hdr.json")
    [ "$b" != null ] || fail "$1: no tensor $2"
    tail -c +$((8 + hn + b + 1)) "$1" | head -c $((e - b)) >"$3"
    jq -r --arg t "$2" '.[$t].shape[0]' "$T/f/hdr.json"
}

for fam in llama qwen2 qwen3 mistral minicpm; do
    G=$D/$fam/golden.safetensors
    for s in 0 1; do
        n=$(tensor "$G" ids_$s "$T/f/ids.u32")
        tensor "$G" logits_$s "$T/f/ref.f32" >/dev/null
        expect_rc 0 "$W" logits --input "$D/$fam" --ids "$T/f/ids.u32" --n "$n" --out "$T/f/ours.f32"
        V=$(jq -r '.vocab_size' "$D/$fam/config.json")
        od -An -v -f -w4 "$T/f/ref.f32" >"$T/f/ref.txt"
        od -An -v -f -w4 "$T/f/ours.f32" >"$T/f/ours.txt"
        res=$(paste "$T/f/ref.txt" "$T/f/ours.txt" | awk -v V="$V" '
            { i = NR - 1; t = int(i / V); r = $1 + 0; o = $2 + 0
              d = r - o; if (d < 0) d = -d; if (d > dmax) dmax = d
              a = r < 0 ? -r : r; if (a > rmax) rmax = a
              if (i % V == 0 || r > br[t]) { br[t] = r; bi[t] = i % V }
              if (i % V == 0 || o > bo[t]) { bo[t] = o; oi[t] = i % V } }
            END { T = NR / V; ok = 0; for (t = 0; t < T; t++) ok += bi[t] == oi[t]
                  printf "%d %d %.3g %.4g %d\n", NR, T, dmax, rmax, ok }')
        set -- $res
        [ "$1" = $((n * V)) ] || fail "$fam seq $s: $1 logits, expected $((n * V))"
        echo "$fam seq $s: max|diff| $3 of max|logit| $4, argmax $5/$2"
        awk -v d="$3" -v r="$4" -v a="$5" -v T="$2" \
            'BEGIN { exit !(r > 0.5 && d <= 1e-3 * r && a >= 0.99 * T) }' ||
            fail "$fam seq $s: outside the tolerance (max|diff| $3, max|logit| $4, argmax $5/$2)"
    done
    tensor "$G" gen_prompt "$T/f/p.i32" >/dev/null
    tensor "$G" gen_ids "$T/f/g.i32" >/dev/null
    od -An -v -t d4 "$T/f/p.i32" | tr -s ' \n' ' ' >"$T/f/prompt.txt"
    golden=$(od -An -v -t d4 "$T/f/g.i32" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
    # generate loads a tokenizer even for ids: the models without one borrow llama's (the same
    # vocabulary of 4096) through a directory of links.
    M=$T/m/$fam
    mkdir -p "$M"
    for f in "$D/$fam"/*; do ln -sf "$f" "$M/"; done
    [ -e "$M/tokenizer.json" ] || ln -s "$D/llama/tokenizer.json" "$M/tokenizer.json"
    expect_rc 0 "$W" generate --input "$M" --ids "$T/f/prompt.txt" --max-new-tokens 12 \
        --print-ids
    ours=$(tr -s ' \n' ' ' <"$OUT" | sed 's/^ //; s/ $//')
    [ "$ours" = "$golden" ] || fail "$fam greedy: got '$ours', golden '$golden'"
    echo "$fam greedy: 12 tokens equal"
done
echo "families ok"
