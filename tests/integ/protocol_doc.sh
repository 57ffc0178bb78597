# docs/protocol.md documents exactly the messages of proto/proto.def.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
sh "$root/tests/lint_protocol.sh" "${EXAQ_BIN:-$root/build/release/bin}"
