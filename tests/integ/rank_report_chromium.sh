# report.html renders in headless Chromium with its charts visible: a small ranked sweep, a
# screenshot (the command documented in docs/ranking.md), then checks that the PNG is not
# trivial: its size, and (when python3 is present) its pixels: many colours, the blue lane
# dots and the red baseline marker of the charts. The PNG is kept as
# build/test-logs/rank_report.png. Exits 77 (skip) without chromium (make deps installs it).
. "$(dirname "$0")/lib.sh"
CHROME=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROME" ]; then
    echo "SKIP: chromium is not installed (apt-get install -y chromium)"
    exit 77
fi
mkdir -p "$T/w"
fake_model "$T/w/base"
cat >"$T/w/lanes.yaml" <<'YAML'
version: 1
sweep: rankhtml
base_model: ./base
eval:
  - exec: {run: "if [ -f {input}/m.json ]; then cp {input}/m.json {metrics}; else printf '{\"ppl\": 10, \"time_per_token\": 0.02}' > {metrics}; fi"}
package: {top: 0}
defaults: {retries: 2, timeout_min: 2, gpus: 0}
lanes:
  - id: fast
    stages: [{exec: {run: "cp {input}/config.json {output}/ && printf '{\"ppl\": 11, \"time_per_token\": 0.008}' > {output}/m.json"}}]
  - id: accurate
    stages: [{exec: {run: "cp {input}/config.json {output}/ && printf '{\"ppl\": 9.5, \"time_per_token\": 0.015}' > {output}/m.json"}}]
  - id: slow
    stages: [{exec: {run: "cp {input}/config.json {output}/ && printf '{\"ppl\": 10.2, \"time_per_token\": 0.03}' > {output}/m.json"}}]
YAML
start_daemon --slots 2
expect_rc 0 ctl submit "$T/w/lanes.yaml"
S=$(cat "$OUT")
expect_rc 0 ctl wait "$S" --timeout 60
H=$EXAQ_HOME/sweeps/$S/report.html
[ -f "$H" ] || fail "no report.html"

timeout 90 "$CHROME" --headless --disable-gpu --no-sandbox --user-data-dir="$T/chrome" \
    --screenshot="$T/shot.png" --window-size=1200,1600 "file://$H" >"$T/chrome.log" 2>&1 ||
    fail "chromium failed: $(tail -5 "$T/chrome.log")"
[ -f "$T/shot.png" ] || fail "no screenshot: $(tail -5 "$T/chrome.log")"
size=$(wc -c <"$T/shot.png")
# A blank 1200x1600 page compresses to a few kB; this page with its charts and table is far more.
[ "$size" -gt 20000 ] || fail "screenshot is only $size bytes"
# kept as a test artifact next to the logs
mkdir -p "${EXAQ_TEST_LOGS:-$SRC/build/test-logs}"
cp "$T/shot.png" "${EXAQ_TEST_LOGS:-$SRC/build/test-logs}/rank_report.png"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$T/shot.png" <<'PY' || fail "screenshot pixels"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, hdr = 8, b"", None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        hdr = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
w, h, depth, ctype, _, _, interlace = hdr
assert depth == 8 and ctype in (2, 6) and interlace == 0, "unexpected PNG format %r" % (hdr,)
bpp = 4 if ctype == 6 else 3
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
colours, blue, red = set(), 0, 0
for y in range(h):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if f == 1:
            line[i] = (line[i] + a) & 255
        elif f == 2:
            line[i] = (line[i] + b) & 255
        elif f == 3:
            line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    for x in range(0, stride, bpp):
        px = (line[x], line[x + 1], line[x + 2])
        colours.add(px)
        if abs(px[0] - 0x25) < 12 and abs(px[1] - 0x63) < 12 and abs(px[2] - 0xeb) < 12:
            blue += 1
        if abs(px[0] - 0xdc) < 12 and abs(px[1] - 0x26) < 12 and abs(px[2] - 0x26) < 12:
            red += 1
    prev = line
print("screenshot %dx%d: %d colours, %d lane-dot pixels, %d baseline pixels" % (w, h, len(colours), blue, red))
assert len(colours) > 20, "the page is nearly one colour"
assert blue > 100, "no lane dots visible"
assert red > 50, "no baseline marker visible"
PY
fi
echo "rank_report_chromium ok: $S ($size bytes)"
