# Acceptance: exaqctl run by a uid that exaqd refuses prints the daemon's "permission denied"
# message and exits 2 (docs/cli.md), never "bad reply" nor death by SIGPIPE (exit 141), however
# the race between its request and the daemon's close falls. Needs root (to run the daemon and
# the client as two other uids); skipped otherwise.
. "$(dirname "$0")/lib.sh"
if [ "$(id -u)" != 0 ] || ! command -v setpriv >/dev/null; then
    echo "SKIP: needs root and setpriv to run exaqd and exaqctl as two other uids"
    exit 77
fi
as_uid() { # UID CMD...
    u=$1
    shift
    setpriv --reuid="$u" --regid="$u" --clear-groups "$@"
}
chmod 711 "$T"
H=$T/uhome
mkdir -p "$H"
chown 65534:65534 "$H"
export EXAQ_HOME=$H # lib.sh's cleanup stops this daemon
as_uid 65534 "$BIN/exaqd" --home "$H" >"$T/start.log" 2>&1 || fail "exaqd did not start: $(cat "$T/start.log")"
wait_for 10 as_uid 65534 "$BIN/exaqctl" --home "$H" ping || fail "exaqd does not answer its own uid"
# Let the other uid reach the socket; the daemon itself must refuse it (SO_PEERCRED).
chmod 711 "$H"
chmod 666 "$H/exaqd.sock"
mkdir -p "$T/w"
fake_model "$T/w/m"
printf 'version: 1\nsweep: d\nbase_model: ./m\nlanes: []\n' >"$T/w/l.yaml"
chmod -R a+rX "$T/w"
for i in $(seq 1 30); do
    for cmd in ping "status --json" "submit $T/w/l.yaml"; do
        set +e
        # shellcheck disable=SC2086
        as_uid 65533 "$BIN/exaqctl" --home "$H" $cmd >"$OUT" 2>"$ERR"
        rc=$?
        set -e
        [ $rc -eq 2 ] || fail "exaqctl $cmd as uid 65533 exited $rc (try $i): $(cat "$ERR")"
        grep -q "permission denied: exaqd runs as uid 65534" "$ERR" ||
            fail "exaqctl $cmd as uid 65533 did not print the daemon's message (try $i): $(cat "$ERR")"
    done
done
# The daemon's own uid and root are still served.
as_uid 65534 "$BIN/exaqctl" --home "$H" ping >/dev/null || fail "exaqd stopped serving its uid"
ctl --home "$H" ping >/dev/null || fail "exaqd stopped serving root"
echo ok
