#!/bin/sh
# A stand-in for `lm_eval` in the tests: writes the recorded lm_eval_results.json where
# lm-evaluation-harness writes its results for --output_path DIR: DIR/MODEL_SANITIZED/
# results_DATE.json, MODEL_SANITIZED being the pretrained= path with '/' made '__'. With
# FAKE_ARGS set it first writes its arguments there, one a line.
here=$(cd "$(dirname "$0")" && pwd)
[ -n "${FAKE_ARGS:-}" ] && printf '%s\n' "$@" >"$FAKE_ARGS"
out= model=
while [ $# -gt 0 ]; do
    case $1 in
    --output_path) out=$2; shift ;;
    --model_args) model=$(printf '%s' "$2" | sed 's/^pretrained=//; s/,.*//'); shift ;;
    esac
    shift
done
[ -n "$out" ] || { echo "fake lm_eval: no --output_path" >&2; exit 2; }
san=$(printf '%s' "$model" | sed 's|/|__|g')
mkdir -p "$out/$san"
echo "INFO Saving results aggregated"
# An older run's file, so the reader must pick the newest by its dated name.
echo '{"results": {"old": {"acc,none": 0}}}' >"$out/$san/results_2026-01-01T00-00-00.000001.json"
cp "$here/lm_eval_results.json" "$out/$san/results_2026-12-07T06-30-00.123456.json"
