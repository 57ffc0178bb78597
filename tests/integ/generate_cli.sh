# exaq-worker generate against the transformers goldens (tests/data/generate/, made by
# tests/tools/make_generate_goldens.py): for every test model with goldens and each prompt,
# `generate --ids FILE --max-new-tokens 64 --print-ids` prints exactly transformers' 64 greedy
# ids; `--prompt TEXT` (the tokenizer's ids) gives the same; `--chat` on a copy of the model that
# carries the EXAONE-4.0 chat template gives the chat goldens. Then the stop rules (--stop-eos,
# --stop) and the errors for bad input. Takes about 10-30 s on 2 cores.
. "$(dirname "$0")/lib.sh"
W="$BIN/exaq-worker"
G=$SRC/tests/data/generate
command -v jq >/dev/null || {
    echo "SKIP jq missing"
    exit 77
}
n_checked=0
for gold in "$G"/*.json; do
    model=$SRC/$(jq -r .model "$gold")
    [ -f "$model/model.safetensors" ] || fail "$gold names a missing model $model"
    # The chat copy: the model's files plus the chat template the goldens used.
    mkdir -p "$T/chat"
    for f in "$model"/*; do ln -sf "$f" "$T/chat/"; done
    cp "$SRC/$(jq -r .chat_template "$gold")" "$T/chat/chat_template.jinja"
    N=$(jq -r .max_new_tokens "$gold")
    for mode in plain chat; do
        cnt=$(jq -r ".$mode | length" "$gold")
        [ "$cnt" -ge 10 ] || fail "$gold: only $cnt $mode prompts"
        i=0
        while [ $i -lt "$cnt" ]; do
            jq -r ".${mode}[$i].prompt_ids | map(tostring) | join(\" \")" "$gold" >"$T/p.ids"
            gold_ids=$(jq -r ".${mode}[$i].new_ids | map(tostring) | join(\" \")" "$gold")
            expect_rc 0 "$W" generate --input "$model" --ids "$T/p.ids" --max-new-tokens "$N" \
                --print-ids --threads 2
            [ "$(cat "$OUT")" = "$gold_ids" ] ||
                fail "$(basename "$gold") $mode prompt $i: got $(cat "$OUT"), want $gold_ids"
            jq -j ".${mode}[$i].prompt" "$gold" >"$T/p.txt"
            if [ $mode = plain ]; then
                expect_rc 0 "$W" generate --input "$model" --prompt-file "$T/p.txt" \
                    --max-new-tokens "$N" --print-ids --threads 2
            else
                expect_rc 0 "$W" generate --input "$T/chat" --prompt-file "$T/p.txt" --chat \
                    --max-new-tokens "$N" --print-ids --threads 2
            fi
            [ "$(cat "$OUT")" = "$gold_ids" ] || fail "$(basename "$gold") $mode prompt $i from text: got $(cat "$OUT")"
            n_checked=$((n_checked + 1))
            i=$((i + 1))
        done
    done
done
[ $n_checked -ge 20 ] || fail "only $n_checked golden prompts checked"

# --prompt TEXT: decoded text, no newline added, equal to the prompt-file run.
model=$SRC/tests/data/tiny-exaone4
expect_rc 0 "$W" generate --input "$model" --prompt "def fibonacci(n):
" --max-new-tokens 12
cp "$OUT" "$T/text1"
printf 'def fibonacci(n):\n' >"$T/p.txt"
expect_rc 0 "$W" generate --input "$model" --prompt-file "$T/p.txt" --max-new-tokens 12
cmp -s "$OUT" "$T/text1" || fail "--prompt and --prompt-file differ"
[ -s "$T/text1" ] || fail "no text generated"
# The ids of the first golden prompt, decoded: its free run repeats "#\n" (ids 6 202); a stop
# string "\n" ends it after the first id 202 and the text is cut before it.
jq -r '.plain[0].prompt_ids | map(tostring) | join(" ")' "$G/tiny-exaone4.json" >"$T/p.ids"
expect_rc 0 "$W" generate --input "$model" --ids "$T/p.ids" --max-new-tokens 64 --stop "
" --print-ids
[ "$(cat "$OUT")" = "6 202" ] || fail "--stop: got $(cat "$OUT")"
expect_rc 0 "$W" generate --input "$model" --ids "$T/p.ids" --max-new-tokens 64 --stop "
"
[ "$(cat "$OUT")" = "#" ] || fail "--stop text: got '$(cat "$OUT")'"
# --stop-eos with EOS 202 (a copy whose generation_config names it): stops after the first 202.
mkdir -p "$T/eos"
for f in "$model"/*; do ln -sf "$f" "$T/eos/"; done
rm "$T/eos/generation_config.json"
printf '{"eos_token_id": [5, 202]}\n' >"$T/eos/generation_config.json"
expect_rc 0 "$W" generate --input "$T/eos" --ids "$T/p.ids" --max-new-tokens 64 --stop-eos --print-ids
[ "$(cat "$OUT")" = "6 202" ] || fail "--stop-eos: got $(cat "$OUT")"
expect_rc 0 "$W" generate --input "$T/eos" --ids "$T/p.ids" --max-new-tokens 5 --print-ids
[ "$(cat "$OUT")" = "6 202 6 202 6" ] || fail "without --stop-eos: got $(cat "$OUT")"
expect_rc 0 "$W" generate --input "$model" --ids "$T/p.ids" --max-new-tokens 0 --print-ids
[ "$(cat "$OUT")" = "" ] || fail "0 new tokens: got $(cat "$OUT")"

# Errors.
expect_rc 1 "$W" generate --input "$model" --max-new-tokens 4
grep -q usage "$ERR" || fail "no usage: $(cat "$ERR")"
expect_rc 1 "$W" generate --input "$model" --prompt a --ids "$T/p.ids" --max-new-tokens 4
expect_rc 1 "$W" generate --input "$model" --prompt a --max-new-tokens -3
grep -q "max-new-tokens" "$ERR" || fail "bad -n message: $(cat "$ERR")"
printf '1 2 x\n' >"$T/bad.ids"
expect_rc 1 "$W" generate --input "$model" --ids "$T/bad.ids" --max-new-tokens 4
grep -q "not a token id" "$ERR" || fail "bad ids message: $(cat "$ERR")"
printf '1 99999\n' >"$T/big.ids"
expect_rc 1 "$W" generate --input "$model" --ids "$T/big.ids" --max-new-tokens 4
grep -q "outside the vocabulary" "$ERR" || fail "big id message: $(cat "$ERR")"
expect_rc 1 "$W" generate --input "$model" --ids "$T/p.ids" --max-new-tokens 4000
grep -q "max_position_embeddings" "$ERR" || fail "window message: $(cat "$ERR")"
expect_rc 1 "$W" generate --input "$model" --prompt hi --chat --max-new-tokens 4
grep -q "chat" "$ERR" || fail "no-template message: $(cat "$ERR")"
expect_rc 1 "$W" generate --input "$T/nowhere" --prompt hi --max-new-tokens 4
echo "ok: $n_checked golden prompts"
