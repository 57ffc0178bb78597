# Acceptance: a sweep is acknowledged only once its rows are committed, and one that could not
# be committed is not half there. With the home's file system full (a small tmpfs), submit
# fails, the sweep runs nowhere, a second submit fails the same way (never "already submitted"),
# and status does not list it; once space is free the same submit works, and after a kill -9
# and a restart the acknowledged sweep is there. Needs root (to mount the tmpfs); skipped
# otherwise.
. "$(dirname "$0")/lib.sh"
if [ "$(id -u)" != 0 ]; then
    echo "SKIP: needs root to mount a small tmpfs as the home"
    exit 77
fi
mkdir -p "$EXAQ_HOME"
mount -t tmpfs -o size=16m tmpfs "$EXAQ_HOME" 2>"$T/mount.err" || {
    echo "SKIP: cannot mount a tmpfs: $(cat "$T/mount.err")"
    exit 77
}
on_exit() {
    rc=$?
    pid=$(cat "$EXAQ_HOME/exaqd.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    pkill -9 -f "exaq-worker serve --home $EXAQ_HOME" 2>/dev/null || true
    sleep 0.2
    umount "$EXAQ_HOME" 2>/dev/null || umount -l "$EXAQ_HOME" 2>/dev/null || true
    (exit $rc)
    cleanup
}
trap on_exit EXIT INT TERM
mkdir -p "$T/w"
fake_model "$T/w/m"
cat >"$T/w/l.yaml" <<'YAML'
version: 1
sweep: full
base_model: ./m
lanes:
  - id: a
    stages:
      - exec: {produces: metrics, run: "echo ran >> runs; printf '{\"v\": 1}' > {metrics}"}
YAML
start_daemon --slots 1
dd if=/dev/zero of="$EXAQ_HOME/fill" bs=64k 2>/dev/null || true
expect_rc 1 ctl submit "$T/w/l.yaml"
grep -q "could not be recorded in the database" "$ERR" || fail "first submit: $(cat "$ERR")"
expect_rc 1 ctl submit "$T/w/l.yaml"
grep -q "already submitted" "$OUT" "$ERR" && fail "the second submit claims the sweep exists"
grep -q "could not be recorded in the database" "$ERR" || fail "second submit: $(cat "$ERR")"
status_json | jq -e '.sweeps | length == 0' >/dev/null || fail "the unrecorded sweep is listed"
sleep 1
[ ! -f "$T/w/runs" ] || fail "the unrecorded sweep ran"
rm -f "$EXAQ_HOME/fill"
expect_rc 0 ctl submit "$T/w/l.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 60
kill9_daemon
start_daemon --slots 1
status_json "$S" | jq -e '.sweeps[0].lanes[] | select(.id == "a") | .state == "done"' >/dev/null ||
    fail "the acknowledged sweep is not there after a restart: $(status_json)"
[ "$(grep -c ran "$T/w/runs")" -eq 1 ] || fail "the stage ran $(grep -c ran "$T/w/runs") times"
echo ok
