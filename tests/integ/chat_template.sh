# exaq-worker chat-template against transformers' apply_chat_template (tests/data/chat/goldens.json,
# made by tests/tools/make_chat_goldens.py): every recorded conversation of every template in
# tests/data/chat/ (EXAONE-4.0, Llama-3.1/3.2, Qwen2.5, Qwen3, Mistral, Gemma: system prompts,
# multi-turn, tools, thought blocks, Korean and emoji text, with and without the generation
# prompt) renders byte for byte as transformers did, with no newline added. Then the errors for
# bad input: a missing or malformed messages file, a template construct outside the subset.
. "$(dirname "$0")/lib.sh"
W="$BIN/exaq-worker"
D=$SRC/tests/data/chat
command -v jq >/dev/null || {
    echo "SKIP jq missing"
    exit 77
}
b64() { if [ "$1" = null ]; then :; else printf '%s' "$1" | base64 -d; fi; }
# One line per case: model, name, generation prompt, then messages, tools, kwargs, the expected
# text and the expected error (a case where transformers raised) base64-encoded ("null" when
# absent).
jq -r '.cases[] | [.model, .name, (.add_generation_prompt | tostring),
        (.messages_json | @base64), (if .tools_json then (.tools_json | @base64) else "null" end),
        (if .kwargs_json then (.kwargs_json | @base64) else "null" end),
        (if .error then "null" else (.expected | @base64) end),
        (if .error then (.error | @base64) else "null" end)] | @tsv' "$D/goldens.json" >"$T/cases.tsv"
n=0 bad=0
while IFS="$(printf '\t')" read -r model name gen msgs tools kwargs expected error; do
    b64 "$msgs" >"$T/m.json"
    set -- --input "$D/$model" --messages "$T/m.json"
    if [ "$tools" != null ]; then
        b64 "$tools" >"$T/t.json"
        set -- "$@" --tools "$T/t.json"
    fi
    [ "$kwargs" != null ] && set -- "$@" --kwargs "$(b64 "$kwargs")"
    [ "$gen" = false ] && set -- "$@" --no-generation-prompt
    rc=0
    "$W" chat-template "$@" >"$T/got" 2>"$T/err" || rc=$?
    if [ "$error" != null ]; then
        # transformers raised: exit 1 with the same message.
        want_err=$(b64 "$error")
        if [ $rc -ne 1 ] || ! grep -qF -- "$want_err" "$T/err"; then
            echo "$model/$name: want error '$want_err', got exit $rc: $(cat "$T/err")"
            bad=$((bad + 1))
        fi
        n=$((n + 1))
        continue
    fi
    b64 "$expected" >"$T/want"
    if [ $rc -ne 0 ]; then
        echo "$model/$name: exit $rc: $(cat "$T/err")"
        bad=$((bad + 1))
    elif ! cmp -s "$T/got" "$T/want"; then
        echo "$model/$name: differs from transformers"
        diff "$T/want" "$T/got" | head -10
        bad=$((bad + 1))
    fi
    n=$((n + 1))
done <"$T/cases.tsv"
echo "chat_template: $n conversations rendered (or refused as transformers did), $bad differ"
[ "$n" -ge 300 ] || fail "only $n cases in the goldens"
for m in exaone-4.0-1.2b llama-3.1-8b-instruct qwen3-0.6b; do
    c=$(awk -F '\t' -v m=$m '$1 == m' "$T/cases.tsv" | wc -l)
    [ "$c" -ge 40 ] || fail "$m: only $c cases (20 conversations with and without the prompt)"
done
[ "$bad" -eq 0 ] || fail "$bad of $n conversations differ"

# Errors: a missing messages file, malformed JSON, messages that are not a list, each exit 1
# with a message naming the file.
E=$D/exaone-4.0-1.2b
expect_rc 1 "$W" chat-template --input "$E" --messages "$T/none.json"
grep -q "none.json" "$ERR" || fail "the error does not name the file: $(cat "$ERR")"
printf '[{"role": "user", "content": "hi"' >"$T/bad.json"
expect_rc 1 "$W" chat-template --input "$E" --messages "$T/bad.json"
grep -q "bad.json" "$ERR" || fail "the error does not name the file: $(cat "$ERR")"
printf '{"role": "user"}' >"$T/obj.json"
expect_rc 1 "$W" chat-template --input "$E" --messages "$T/obj.json"
grep -qi "list" "$ERR" || fail "the error does not say a list is needed: $(cat "$ERR")"
# A construct outside the subset is named, with its line and column in the template.
mkdir -p "$T/m"
cp "$E/tokenizer_config.json" "$T/m/"
printf '{%% for m in messages %%}\n{{ m.content | wordwrap(3) }}{%% endfor %%}' >"$T/m/chat_template.jinja"
printf '[{"role": "user", "content": "hello"}]' >"$T/ok.json"
expect_rc 1 "$W" chat-template --input "$T/m" --messages "$T/ok.json"
grep -q "wordwrap" "$ERR" || fail "the error does not name the filter: $(cat "$ERR")"
grep -qE "2:[0-9]+" "$ERR" || fail "the error has no line:column: $(cat "$ERR")"
cat "$ERR"
echo "ok: $n conversations"
