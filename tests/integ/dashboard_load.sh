# The dashboard under load while a sweep runs: rounds of 200 concurrent API and page requests
# (plus 20 open event streams) against exaqd --http. Every request must succeed, `exaqctl
# status` must keep answering within 1 s meanwhile, and no worker may be killed for silence
# (the heartbeat grace is cut to 3 s, so a loop stalled by the HTTP side would show).
export EXAQ_HEARTBEAT_GRACE_S=3
. "$(dirname "$0")/lib.sh"
command -v curl >/dev/null 2>&1 || { echo "SKIP: curl is not installed"; exit 77; }
mkdir -p "$T/w"
fake_model "$T/w/base"
# Lanes that keep running (and printing) while the requests come, then finish.
cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: load
base_model: ./base
eval:
  - exec: {run: "printf '{\"ppl\": 10, \"time_per_token\": 0.02}' > {metrics}"}
package: {top: 0}
defaults: {retries: 0, timeout_min: 2, gpus: 0}
lanes:
  - id: a
    stages: [{exec: {run: "cp {input}/config.json {output}/; i=0; while [ ! -f $T/stop ]; do i=\$((i+1)); echo tick \$i; sleep 0.05; done"}}]
  - id: b
    stages: [{exec: {run: "cp {input}/config.json {output}/; while [ ! -f $T/stop ]; do echo b; sleep 0.05; done"}}]
YAML
start_daemon --slots 2 --http 127.0.0.1:0
PORT=$(sed -n 's/.*http: listening on .* (port \([0-9]*\)).*/\1/p' "$EXAQ_HOME/exaqd.log" | tail -n 1)
[ -n "$PORT" ] || fail "exaqd did not log its http port"
URL=http://127.0.0.1:$PORT
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
wait_for 20 sh -c "$BIN/exaqctl status $S --json | jq -e '[.sweeps[0].lanes[] | select(.id != \"baseline\") | .stages[0].state == \"running\"] | all' >/dev/null" ||
    fail "the lanes did not start"

# One curl process, 200 transfers at once; each line of $T/codes is one response's status.
: >"$T/curlrc"
for i in $(seq 1 40); do
    for p in "/api/sweeps" "/api/sweeps/$S" "/api/live" "/api/sweeps/$S/lanes/a/log" "/sweeps/$S"; do
        printf 'url = "%s%s"\noutput = "/dev/null"\n' "$URL" "$p" >>"$T/curlrc"
    done
done
for i in $(seq 1 20); do
    curl -s -N --max-time 20 "$URL/api/events" >"$T/sse.$i" 2>/dev/null &
done
max_ms=0
rounds=5
for r in $(seq 1 $rounds); do
    curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max 200 --max-time 30 -K "$T/curlrc" \
        -w '%{http_code}\n' >>"$T/codes" &
    cpid=$!
    # exaqctl status, timed, while the requests are in flight
    while kill -0 $cpid 2>/dev/null; do
        t0=$(date +%s%N)
        ctl status "$S" >/dev/null || fail "exaqctl status failed under load"
        ms=$((($(date +%s%N) - t0) / 1000000))
        [ $ms -gt $max_ms ] && max_ms=$ms
        sleep 0.02
    done
    wait $cpid || fail "curl failed in round $r"
done
n=$(wc -l <"$T/codes")
ok=$(grep -c '^200$' "$T/codes" || true)
echo "requests: $n, 200 OK: $ok, slowest exaqctl status under load: ${max_ms} ms"
[ "$n" -eq $((rounds * 200)) ] || fail "expected $((rounds * 200)) responses, got $n"
[ "$ok" -eq "$n" ] || fail "not every request succeeded: $(sort "$T/codes" | uniq -c | tr '\n' ' ')"
[ "$max_ms" -lt 1000 ] || fail "exaqctl status took ${max_ms} ms under load (limit 1000)"
# the streams were served too: each got its hello
for i in $(seq 1 20); do
    grep -q '^event: hello' "$T/sse.$i" || fail "event stream $i got no hello"
done

touch "$T/stop"
expect_rc 0 ctl wait "$S" --timeout 30
if grep -q 'silent for' "$EXAQ_HOME/exaqd.log"; then
    fail "a worker was killed for silence: $(grep 'silent for' "$EXAQ_HOME/exaqd.log" | head -n 1)"
fi
status_json "$S" >"$T/st.json"
if jq -e '[.sweeps[0].lanes[].stages[].history[]? | select(.class == "lost")] | length > 0' "$T/st.json" >/dev/null; then
    fail "an attempt was lost under load"
fi
jq -e '.sweeps[0].lanes | map(.state == "done") | all' "$T/st.json" >/dev/null || fail "not every lane is done"
grep -q 'event loop lagged' "$EXAQ_HOME/exaqd.log" && echo "note: $(grep -c 'event loop lagged' "$EXAQ_HOME/exaqd.log") loop-lag warnings"
echo "dashboard_load ok"
