#!/bin/sh
# A stand-in for `vllm` in the tests: `fake_vllm.sh bench latency ARGS...` prints progress like
# the real benchmark and writes the recorded vllm_latency.json (next to this script) to the
# --output-json path. With FAKE_ARGS set it first writes its arguments there, one a line.
# FAKE_EXIT=N makes it fail with status N after printing a line.
here=$(cd "$(dirname "$0")" && pwd)
[ -n "${FAKE_ARGS:-}" ] && printf '%s\n' "$@" >"$FAKE_ARGS"
[ "$1 $2" = "bench latency" ] || { echo "fake vllm: want 'bench latency', got '$1 $2'" >&2; exit 2; }
out=
while [ $# -gt 0 ]; do
    case $1 in --output-json) out=$2; shift ;; esac
    shift
done
echo "Warming up..."
if [ -n "${FAKE_EXIT:-}" ]; then
    echo "CUDA error: no kernel image is available for execution on the device" >&2
    exit "$FAKE_EXIT"
fi
echo "Avg latency: 0.5616749600000001 seconds"
[ -n "$out" ] && cp "$here/vllm_latency.json" "$out"
