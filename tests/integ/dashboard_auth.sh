# The dashboard's access rules (docs/http.md): a non-loopback address needs --http-token-file
# (exaqd refuses to start without it); with a token, a request without it, or with a wrong one,
# gets 401, from a non-loopback client address too; a path with ".." gets 404, also encoded;
# files are served only by name and never from outside the home (a symlink out is 404); no
# method but GET and HEAD is accepted. With chromium installed, the pages also work in a browser
# given ?token=.
. "$(dirname "$0")/lib.sh"
command -v curl >/dev/null 2>&1 || { echo "SKIP: curl is not installed"; exit 77; }
mkdir -p "$T/w"
cp -R "$SRC/tests/data/tiny-exaone4" "$T/w/base" # a real model, so that a zip is packaged
cat >"$T/w/lanes.yaml" <<'YAML'
version: 1
sweep: auth
base_model: ./base
eval:
  - exec: {run: "if [ -f {input}/q.json ]; then cp {input}/q.json {metrics}; else printf '{\"ppl\": 10, \"time_per_token\": 0.02}' > {metrics}; fi"}
package: {top: 1}
defaults: {retries: 0, timeout_min: 2, gpus: 0}
lanes:
  - id: one
    stages: [{exec: {run: "cp -R {input}/. {output}/ && printf '{\"ppl\": 9, \"time_per_token\": 0.01}' > {output}/q.json"}}]
YAML
code() { curl -s -o "$T/body" -w '%{http_code}' --path-as-is "$@"; }
expect_code() {
    want=$1
    shift
    got=$(code "$@")
    [ "$got" = "$want" ] || fail "curl $*: got $got, expected $want ($(head -c 200 "$T/body"))"
}

# --- refused configurations
expect_rc 1 "$BIN/exaqd" --http 0.0.0.0:0
grep -q 'not a loopback address: give --http-token-file' "$ERR" || fail "no reason: $(cat "$ERR")"
printf 'short\n' >"$T/short"
expect_rc 1 "$BIN/exaqd" --http 0.0.0.0:0 --http-token-file "$T/short"
grep -q 'too short' "$ERR" || fail "no reason for a short token: $(cat "$ERR")"
expect_rc 1 "$BIN/exaqd" --http 'nonsense:80'
grep -q 'numeric' "$ERR" || fail "no reason for a bad address: $(cat "$ERR")"
expect_rc 1 "$BIN/exaqd" --http '127.0.0.1:99999'
expect_rc 1 "$BIN/exaqd" --http-token-file "$T/short"
[ ! -S "$EXAQ_HOME/exaqd.sock" ] || fail "exaqd started anyway"

# --- loopback, no token: open, but read-only and only inside the home
start_daemon --http 127.0.0.1:0
PORT=$(sed -n 's/.*http: listening on .* (port \([0-9]*\)).*/\1/p' "$EXAQ_HOME/exaqd.log" | tail -n 1)
URL=http://127.0.0.1:$PORT
# a port in use: a second exaqd (another home) says so and leaves no socket behind
expect_rc 1 "$BIN/exaqd" --home "$T/home2" --http "127.0.0.1:$PORT"
grep -q 'cannot listen on' "$ERR" || fail "no reason for a port in use: $(cat "$ERR")"
[ ! -e "$T/home2/exaqd.sock" ] || fail "a failed start left its socket"
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 30
expect_code 200 "$URL/api/sweeps"
jq -e --arg s "$S" '.sweeps[0].id == $s and .sweeps[0].state == "ended"' "$T/body" >/dev/null ||
    fail "unexpected /api/sweeps: $(cat "$T/body")"
expect_code 200 "$URL/sweeps/$S/rank.csv"
cmp -s "$T/body" "$EXAQ_HOME/sweeps/$S/rank.csv" || fail "rank.csv differs from the file"
expect_code 200 "$URL/sweeps/$S/submissions/submit_top1.zip"
cmp -s "$T/body" "$EXAQ_HOME/sweeps/$S/submissions/submit_top1.zip" || fail "the zip differs"
for p in "/sweeps/$S/../../exaq.db" "/sweeps/../exaq.db" "/static/../../exaqd.log" \
    "/static/..%2f..%2fexaq.db" "/sweeps/$S/%2e%2e/%2e%2e/exaq.db" "/api/sweeps/.." \
    "/sweeps/$S/..%2f..%2fexaq.db" "/api/sweeps/$S/lanes/../log" "/sweeps/%2e%2e"; do
    expect_code 404 "$URL$p"
done
# only the listed names, never another file of the sweep dir, the home or the machine
expect_code 404 "$URL/sweeps/$S/lanes.yaml"
expect_code 404 "$URL/exaq.db"
expect_code 404 "$URL/static/exaq.db"
expect_code 404 "$URL/sweeps/$S/submissions/other.zip"
expect_code 404 "$URL/sweeps/nosuch/rank.csv"
expect_code 404 "$URL/api/sweeps/nosuch"
# a result file that is a symlink out of the home is not followed out
secret=$T/outside-secret.txt
echo "secret" >"$secret"
rm -f "$EXAQ_HOME/sweeps/$S/rank.csv"
ln -s "$secret" "$EXAQ_HOME/sweeps/$S/rank.csv"
expect_code 404 "$URL/sweeps/$S/rank.csv"
# read-only: no method that could change anything
for m in POST PUT DELETE PATCH; do
    expect_code 405 -X "$m" -d x "$URL/api/sweeps"
done
expect_rc 0 ctl shutdown
wait_for 10 sh -c "! [ -S '$EXAQ_HOME/exaqd.sock' ]" || fail "exaqd did not stop"

# --- any address, with a token
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$TOKEN" >"$T/token"
chmod 600 "$T/token"
start_daemon --http 0.0.0.0:0 --http-token-file "$T/token"
PORT=$(sed -n 's/.*http: listening on .* (port \([0-9]*\)).*/\1/p' "$EXAQ_HOME/exaqd.log" | tail -n 1)
hosts=127.0.0.1
# a non-loopback address of this machine, when it has one
ext=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | grep -v '^127\.' | head -n 1 || true)
[ -n "$ext" ] && hosts="$hosts $ext"
for h in $hosts; do
    U=http://$h:$PORT
    expect_code 401 "$U/"
    expect_code 401 "$U/api/sweeps"
    expect_code 401 "$U/api/events"
    expect_code 401 "$U/sweeps/$S/../../exaq.db"
    expect_code 401 -H "Authorization: Bearer wrong" "$U/api/sweeps"
    # same length, one character off
    bad=$(printf '%s' "$TOKEN" | sed 's/^./x/')
    [ "$bad" != "$TOKEN" ] || bad=$(printf '%s' "$TOKEN" | sed 's/^./y/')
    expect_code 401 "$U/api/sweeps?token=$bad"
    expect_code 401 "$U/api/sweeps?token=${TOKEN}x"
    expect_code 200 -H "Authorization: Bearer $TOKEN" "$U/api/sweeps"
    jq -e --arg s "$S" '.sweeps[0].id == $s' "$T/body" >/dev/null || fail "no sweep with the token"
    expect_code 200 "$U/api/sweeps/$S?token=$TOKEN"
    expect_code 404 "$U/sweeps/$S/../../exaq.db?token=$TOKEN"
done
echo "checked hosts: $hosts"

CHROME=$(command -v chromium || command -v chromium-browser || true)
CDP=
for d in "${EXAQ_TEST_BIN:-}" "$SRC/build/release/tests" "$SRC/build/asan/tests"; do
    if [ -n "$d" ] && [ -x "$d/integ/cdp" ]; then CDP=$d/integ/cdp; break; fi
done
if [ -n "$CHROME" ]; then
    [ -n "$CDP" ] || fail "no tests/integ/cdp program (make unit-bins builds it)"
    {
        echo "open http://127.0.0.1:$PORT/?token=$TOKEN"
        echo "wait 5000 document.querySelector('#sweeps tr[data-sweep=\"$S\"]') !== null"
        echo "open http://127.0.0.1:$PORT/sweeps/$S?token=$TOKEN"
        echo "wait 5000 document.body.dataset.sse === 'open' && document.querySelector('#lanes tr.lane-row[data-lane=\"one\"]') !== null"
        echo "expect document.querySelector('#files a[href*=\"report.html\"]').href.indexOf('token=') > 0"
    } >"$T/script"
    timeout 60 "$CDP" "$CHROME" "$T/chrome" <"$T/script" || fail "the pages do not work with ?token="
fi
echo "dashboard_auth ok"
