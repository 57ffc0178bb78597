#!/bin/sh
# Checks that the generated block of docs/protocol.md equals what proto.def defines.
# Usage: tests/lint_protocol.sh [BINDIR]
set -eu
bin=${1:-${EXAQ_BIN:-build/release/bin}}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.doc"' EXIT
"$bin/exaqctl" --protocol >"$tmp"
sed -n '/^## Message reference (generated)/,$p' "$root/docs/protocol.md" |
    sed -n '/^```$/,/^```$/p' | sed '1d;$d' >"$tmp.doc"
if ! diff -u "$tmp.doc" "$tmp"; then
    echo "docs/protocol.md is out of date with proto/proto.def; regenerate its last block with"
    echo "'exaqctl --protocol'"
    exit 1
fi
echo "docs/protocol.md matches proto.def"
