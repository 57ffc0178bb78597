#!/bin/sh
# Test runner: each test runs as its own process with a timeout and prints ok / not ok / skip
# (exit code 77 means skip, as in libuv). The output of each test goes to a log file; a
# failure prints the log's last lines. Exit status: 0 when nothing failed.
#
#   tests/run.sh TEST...          TEST is a test binary or a tests/integ/*.sh script
#   EXAQ_TEST_TIMEOUT=SEC         per-test limit (default 600)
#   EXAQ_TEST_FILTER=REGEX        run only tests whose name matches
set -u
timeout_s=${EXAQ_TEST_TIMEOUT:-600}
logdir=${EXAQ_TEST_LOGS:-build/test-logs}
mkdir -p "$logdir"
pass=0 fail=0 skip=0 n=0 failed=""
start_all=$(date +%s)
for t in "$@"; do
    name=$(basename "$t")
    name=${name%.sh}
    if [ -n "${EXAQ_TEST_FILTER:-}" ] && ! echo "$name" | grep -qE "$EXAQ_TEST_FILTER"; then
        continue
    fi
    n=$((n + 1))
    log="$logdir/$name.log"
    t0=$(date +%s)
    case "$t" in
    *.sh) timeout -k 10 "$timeout_s" sh "$t" >"$log" 2>&1 ;;
    *) timeout -k 10 "$timeout_s" "$t" >"$log" 2>&1 ;;
    esac
    rc=$?
    dt=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        echo "ok $n $name (${dt}s)"
        pass=$((pass + 1))
    elif [ $rc -eq 77 ]; then
        reason=$(grep -m1 '^SKIP' "$log" || true)
        echo "skip $n $name ${reason:+- $reason}"
        skip=$((skip + 1))
    else
        [ $rc -eq 124 ] && echo "# $name: timed out after ${timeout_s}s"
        echo "not ok $n $name (exit $rc, ${dt}s)"
        tail -n 40 "$log" | sed 's/^/#   /'
        fail=$((fail + 1))
        failed="$failed $name"
    fi
done
echo "# $pass passed, $fail failed, $skip skipped in $(($(date +%s) - start_all))s (logs in $logdir)"
[ $fail -eq 0 ] || { echo "# failed:$failed"; exit 1; }
