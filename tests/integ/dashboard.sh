# The web dashboard (exaqd --http, docs/http.md) in a real headless Chromium during a running
# sweep, driven over the DevTools protocol by tests/integ/cdp.c: the sweeps page, the sweep page
# (lane ids, states, a metric, the chart) and a log page; then, with the pages open, a stage's
# state change and new log lines must show within 2 s without a reload (checked by a marker
# set in the page before the change). Screenshots are kept in build/test-logs/. Exits 77 (skip)
# only where Chromium is not installed.
. "$(dirname "$0")/lib.sh"
CHROME=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROME" ]; then
    echo "SKIP: chromium is not installed (make deps installs it)"
    exit 77
fi
# the DevTools driver: next to the tests, else in a build that has one (make check's TSan pass
# runs the scripts with the ASan build's helpers)
CDP=
for d in "${EXAQ_TEST_BIN:-}" "$SRC/build/release/tests" "$SRC/build/asan/tests"; do
    if [ -n "$d" ] && [ -x "$d/integ/cdp" ]; then CDP=$d/integ/cdp; break; fi
done
[ -n "$CDP" ] || fail "no tests/integ/cdp program (make unit-bins builds it)"
SHOTS=${EXAQ_TEST_LOGS:-$SRC/build/test-logs}/dashboard
mkdir -p "$SHOTS" "$T/w"
rm -f "$SHOTS"/*.png

fake_model "$T/w/base"
# gated waits for $T/go1 (the sweep page test) and reports progress meanwhile, follow for $T/go2 (the log page test); the
# other lanes finish at once with different metrics, so the table and the chart have data.
cat >"$T/w/lanes.yaml" <<YAML
version: 1
sweep: dash
base_model: ./base
eval:
  - exec: {run: "if [ -f {input}/m.json ]; then cp {input}/m.json {metrics}; else printf '{\"ppl\": 10, \"time_per_token\": 0.02}' > {metrics}; fi"}
package: {top: 1}
defaults: {retries: 0, timeout_min: 2, gpus: 0}
lanes:
  - id: fast
    stages: [{exec: {run: "cp {input}/config.json {output}/ && printf '{\"ppl\": 11, \"time_per_token\": 0.008}' > {output}/m.json"}}]
  - id: accurate
    stages: [{exec: {run: "cp {input}/config.json {output}/ && printf '{\"ppl\": 9.5, \"time_per_token\": 0.015}' > {output}/m.json"}}]
  - id: gated
    stages: [{exec: {run: "cp {input}/config.json {output}/ && printf '{\"ppl\": 10.2, \"time_per_token\": 0.012}' > {output}/m.json && X=waiting && i=0; while [ ! -f $T/go1 ]; do i=\$((i+1)); echo gated-\$X-\$i; echo \$i 100000 >>\$EXAQ_PROGRESS; sleep 0.05; done; echo gated goes"}}]
  - id: follow
    stages: [{exec: {run: "cp {input}/config.json {output}/ && X=line && echo follow-\$X-1; while [ ! -f $T/go2 ]; do sleep 0.05; done; echo follow-\$X-2-after-go; sleep 0.5; echo follow-\$X-3"}}]
YAML
start_daemon --slots 3 --http 127.0.0.1:0
PORT=$(sed -n 's/.*http: listening on .* (port \([0-9]*\)).*/\1/p' "$EXAQ_HOME/exaqd.log" | tail -n 1)
[ -n "$PORT" ] || fail "exaqd did not log its http port"
URL=http://127.0.0.1:$PORT
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
running() {
    status_json "$S" | jq -e --arg l "$1" '.sweeps[0].lanes[] | select(.id == $l) | .stages[0].state == "running"' >/dev/null
}
wait_for 20 running gated || fail "gated never ran"
wait_for 20 running follow || fail "follow never ran"
# the quick lanes have finished (their metrics are in the table)
wait_for 20 sh -c "$BIN/exaqctl status $S --json | jq -e '[.sweeps[0].lanes[] | select(.id == \"fast\" or .id == \"accurate\") | .state == \"done\"] | all' >/dev/null" ||
    fail "fast and accurate did not finish"

q() { printf '%s\n' "$*"; }
{
    q "# the sweeps page: the sweep, running, with its progress"
    q "open $URL/"
    q "wait 5000 document.querySelector('#sweeps tr[data-sweep=\"$S\"]') !== null"
    q "expect document.querySelector('#sweeps tr[data-sweep=\"$S\"] [data-state]').dataset.state === 'running'"
    q "expect document.querySelector('#sweeps tr[data-sweep=\"$S\"] progress') !== null"
    q "shot $SHOTS/sweeps.png"
    q "# the sweep page: lane ids, states, a metric, the chart, the event stream open"
    q "open $URL/sweeps/$S"
    q "wait 5000 document.body.dataset.sse === 'open' && document.querySelector('#lanes') !== null"
    q "expect ['baseline','fast','accurate','gated','follow'].every(function (l) { return document.querySelector('#lanes tr.lane-row[data-lane=\"' + l + '\"]') !== null; })"
    q "expect document.querySelector('tr.lane-row[data-lane=\"fast\"] .lane-state [data-state]').dataset.state === 'done'"
    q "expect document.querySelector('tr.stage-row[data-lane=\"gated\"][data-stage=\"exec\"] [data-state]').dataset.state === 'running'"
    q "wait 3000 /slot [0-9]/.test(document.querySelector('tr.stage-row[data-lane=\"gated\"][data-stage=\"exec\"] .slot').textContent)"
    q "# its progress (done/total lines in \$EXAQ_PROGRESS) as a bar with a percentage, and an ETA"
    q "wait 3000 (function (r) { var p = r.querySelector('.progress progress'); return p && p.max === 100000 && p.value > 0 && /[0-9]+ (s|min|h)/.test(r.querySelector('.eta').textContent); })(document.querySelector('tr.stage-row[data-lane=\"gated\"][data-stage=\"exec\"]'))"
    q "# its last output line, from the live events (it prints a numbered line every 50 ms)"
    q "wait 3000 /^gated-waiting-[0-9]+\$/.test(document.querySelector('tr.stage-row[data-lane=\"gated\"][data-stage=\"exec\"] .lastline').textContent)"
    q "expect document.querySelector('#metrics tr[data-lane=\"accurate\"] td[data-metric=\"ppl\"]').textContent === '9.500'"
    q "expect document.querySelectorAll('#chart circle').length >= 3"
    q "expect document.querySelector('#chart text.top3') !== null"
    q "eval document.querySelector('#lanes').innerText.replace(/\\s+/g, ' ').slice(0, 400)"
    q "# sorting the metrics table by ppl puts accurate (9.5) first"
    q "eval document.querySelector('#metrics th[data-col=\"ppl\"]').click()"
    q "wait 1000 document.querySelector('#metrics tbody tr').dataset.lane === 'accurate'"
    q "shot $SHOTS/sweep-running.png"
    q "# a stage's state change shows within 2 s, without a reload"
    q "eval window.testMark = window.exaqLoadId"
    q "sh touch $T/go1"
    q "wait 2000 document.querySelector('tr.stage-row[data-lane=\"gated\"][data-stage=\"exec\"] [data-state]').dataset.state === 'done'"
    q "expect window.testMark === window.exaqLoadId"
    q "shot $SHOTS/sweep-changed.png"
    q "# the log page follows a growing log"
    q "open $URL/sweeps/$S/lanes/follow/log"
    q "wait 5000 document.querySelector('pre.log') !== null && document.querySelector('pre.log').textContent.indexOf('follow-line-1') >= 0"
    q "eval window.testMark = window.exaqLoadId"
    q "sh touch $T/go2"
    q "wait 2000 document.querySelector('pre.log').textContent.indexOf('follow-line-2-after-go') >= 0"
    q "wait 3000 document.querySelector('pre.log').textContent.indexOf('follow-line-3') >= 0"
    q "expect window.testMark === window.exaqLoadId"
    q "expect document.querySelector('pre.log').textContent.split('follow-line-1').length === 2"
    q "shot $SHOTS/log.png"
    q "# once the sweep ends: its report and rank.csv are linked, and report.html opens"
    q "open $URL/sweeps/$S"
    q "wait 15000 document.querySelector('h1 [data-state]').dataset.state === 'ended' && document.querySelector('#files a[href\$=\"rank.csv\"]') !== null"
    q "expect document.querySelector('#files a[href\$=\"report.html\"]') !== null"
    q "# best: fast (0.5 * 10/11 + 0.5 * (1 - 0.008/0.02) = 0.7545) beats gated (0.690), accurate (0.651)"
    q "expect document.querySelector('#best').textContent === 'fast (score 0.7545)'"
    q "shot $SHOTS/sweep-ended.png"
    q "open $URL/sweeps/$S/report.html"
    q "wait 5000 document.body.innerText.indexOf('accurate') >= 0"
} >"$T/script"
timeout 90 "$CDP" "$CHROME" "$T/chrome" <"$T/script" || {
    tail -n 5 "$T/chrome/log" >&2
    fail "the browser checks failed"
}
for f in sweeps sweep-running sweep-changed log sweep-ended; do
    [ "$(wc -c <"$SHOTS/$f.png")" -gt 10000 ] || fail "screenshot $f.png is too small"
done
expect_rc 0 ctl wait "$S" --timeout 30
echo "dashboard ok: $S, screenshots in $SHOTS"
