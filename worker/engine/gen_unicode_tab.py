#!/usr/bin/env python3
"""Generate worker/engine/unicode_tab.c: the Unicode tables of the tokenizer.

Usage (from the repository root):

    pip install unicodedata2==16.0.0      # in a scratch venv
    python3 worker/engine/gen_unicode_tab.py --unicodedata2 > worker/engine/unicode_tab.c

Everything comes from Python's `unicodedata` module: the standard one by default (whose Unicode
version is that of the Python running the script: 14.0 for 3.11), or with --unicodedata2 its
PyPI backport, which has the same API and a newer Unicode. The committed file uses
unicodedata2 16.0.0 because that is the Unicode version of the regex engines inside tokenizers
0.2x (Oniguruma 6.9.10 and the regex crate): measured with tokenizers 0.23.3, U+105C0 (a
Unicode 16.0 letter) is \p{L} there and U+16EA0 (Unicode 17.0) is not. The version used is
written into the generated file's header. The classes are the ones the Hugging Face
`tokenizers` regexes use:

  L   General_Category L* (\\p{L})
  N   General_Category N* (\\p{N})
  M   General_Category M* (\\p{M}, only used by the Qwen3.5-style split pattern)
  WS  White_Space, which is what both Oniguruma's and the Rust regex crate's \\s match:
      U+0009..U+000D, U+0085 and General_Category Zs, Zl, Zp
  W   the Rust regex crate's \\w (Alphabetic, M, Nd, Pc, Join_Control), used for the
      single_word rule of added tokens

and, for the NFC normalizer, the NFC_Quick_Check property (Yes / Maybe / No) and the canonical
combining class, so that the tokenizer can prove that NFC leaves a text unchanged (UAX #15
quick check) instead of implementing normalization.
"""

import sys

if "--unicodedata2" in sys.argv[1:]:
    import unicodedata2 as unicodedata  # noqa: E402  (pip install unicodedata2)
    from importlib.metadata import version  # noqa: E402
    MODULE = "unicodedata2 %s" % version("unicodedata2")
else:
    import unicodedata  # noqa: E402
    MODULE = "unicodedata of Python %s" % sys.version.split()[0]

MAXCP = 0x110000

L, N, WS, M, W = 0x01, 0x02, 0x04, 0x08, 0x10

# Other_Alphabetic code points whose General_Category is not M (PropList.txt). Python's
# unicodedata has no Alphabetic property, so these few So ranges (circled and squared Latin
# letters) are listed by hand; every other Other_Alphabetic code point is Mn or Mc and is
# already in M.
OTHER_ALPHABETIC_SO = [(0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169),
                       (0x1F170, 0x1F189)]

# White_Space as listed in PropList.txt (unchanged since Unicode 6.3); checked below.
WHITE_SPACE = set(range(0x9, 0xE)) | {0x20, 0x85, 0xA0, 0x1680} | set(range(0x2000, 0x200B)) \
    | {0x2028, 0x2029, 0x202F, 0x205F, 0x3000}


def classes(cp):
    ch = chr(cp)
    gc = unicodedata.category(ch)
    m = 0
    if gc[0] == 'L':
        m |= L
    if gc[0] == 'N':
        m |= N
    if gc[0] == 'M':
        m |= M
    if (0x9 <= cp <= 0xD) or cp == 0x85 or gc in ('Zs', 'Zl', 'Zp'):
        m |= WS
    alpha = gc[0] == 'L' or gc == 'Nl' or any(a <= cp <= b for a, b in OTHER_ALPHABETIC_SO)
    if alpha or gc[0] == 'M' or gc == 'Nd' or gc == 'Pc' or cp in (0x200C, 0x200D):
        m |= W
    return m


def ranges(values):
    """Run-length encode a list of per-code-point values, skipping the zero runs."""
    out = []
    start = 0
    for cp in range(1, MAXCP + 1):
        if cp == MAXCP or values[cp] != values[start]:
            if values[start]:
                out.append((start, cp - 1, values[start]))
            start = cp
    return out


def nfc_tables():
    """NFC_Quick_Check (0 Yes, 1 Maybe, 2 No) and canonical combining class per code point."""
    qc = [0] * MAXCP
    ccc = [0] * MAXCP
    for cp in range(MAXCP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        ccc[cp] = unicodedata.combining(ch)
        if unicodedata.normalize('NFC', ch) != ch:
            qc[cp] = 2
    # Maybe: the second character of every canonical pair that composes (primary composites
    # with a two-character canonical decomposition), plus the Hangul V and T jamo.
    for cp in range(MAXCP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        d = unicodedata.decomposition(ch)
        if not d or d.startswith('<'):
            continue
        parts = [int(x, 16) for x in d.split()]
        if len(parts) == 2 and unicodedata.normalize('NFC', ch) == ch and qc[parts[1]] == 0:
            qc[parts[1]] = 1
    for cp in list(range(0x1161, 0x1176)) + list(range(0x11A8, 0x11C3)):
        qc[cp] = 1
    return qc, ccc


def self_check(cls, qc, ccc):
    ws = {cp for cp in range(MAXCP) if cls[cp] & WS}
    assert ws == WHITE_SPACE, sorted(ws ^ WHITE_SPACE)
    # Python's str.isspace() is White_Space plus U+001C..U+001F.
    pyws = {cp for cp in range(MAXCP) if chr(cp).isspace()}
    assert pyws - ws == set(range(0x1C, 0x20)), sorted(pyws ^ ws)
    for cp in range(MAXCP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        # A single character that is not "No" is always NFC on its own.
        if qc[cp] != 2:
            assert unicodedata.normalize('NFC', ch) == ch, hex(cp)
    # Every Maybe character really composes with something: take one base per Maybe char.
    n_maybe = sum(1 for v in qc if v == 1)
    assert n_maybe > 100, n_maybe
    assert qc[0x0301] == 1 and qc[0x212B] == 2 and qc[0xE9] == 0 and qc[0xAC00] == 0
    assert ccc[0x0301] == 230 and ccc[0x41] == 0


def emit(cls, qc, ccc):
    w = sys.stdout.write
    ver = unicodedata.unidata_version
    cls_r = ranges(cls)
    packed = [((ccc[cp] << 2) | qc[cp]) if cp < MAXCP else 0 for cp in range(MAXCP)]
    nfc_r = ranges(packed)
    w("/*\n")
    w(" * unicode_tab: Unicode %s tables for the tokenizer (character classes of the split\n" % ver)
    w(" * regexes and the NFC quick check). GENERATED by worker/engine/gen_unicode_tab.py from\n")
    w(" * %s (Unicode %s); do not edit, rerun the generator.\n" % (MODULE, ver))
    w(" */\n")
    w('#include "worker/engine/unicode_tab.h"\n\n')
    w("/* clang-format off */\n")
    w("const char utab_unicode_version[] = \"%s\";\n\n" % ver)
    w("/* Classes of U+0000..U+007F, the fast path. */\n")
    w("const uint8_t utab_ascii[128] = {\n")
    for i in range(0, 128, 16):
        w("    " + ", ".join("0x%02x" % cls[c] for c in range(i, i + 16)) + ",\n")
    w("};\n\n")
    w("struct utab_range {\n    uint32_t lo, hi;\n    uint16_t v;\n};\n\n")
    w("/* Code point ranges with a non-empty class set, sorted, non-overlapping (%d). */\n"
      % len(cls_r))
    w("static const struct utab_range class_ranges[] = {\n")
    for lo, hi, v in cls_r:
        w("    { 0x%04x, 0x%04x, 0x%02x },\n" % (lo, hi, v))
    w("};\n\n")
    w("/* NFC data: v = ccc << 2 | quick check (0 yes, 1 maybe, 2 no), non-zero entries only"
      " (%d). */\n" % len(nfc_r))
    w("static const struct utab_range nfc_ranges[] = {\n")
    for lo, hi, v in nfc_r:
        w("    { 0x%04x, 0x%04x, 0x%03x },\n" % (lo, hi, v))
    w("};\n")
    w("/* clang-format on */\n\n")
    w("""static unsigned lookup(const struct utab_range *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return r[mid].v;
    }
    return 0;
}

unsigned utab_class_slow(uint32_t cp)
{
    return lookup(class_ranges, sizeof(class_ranges) / sizeof(class_ranges[0]), cp);
}

void utab_nfc(uint32_t cp, unsigned *qc, unsigned *ccc)
{
    unsigned v = 0;
    if (cp >= 0x300)
        v = lookup(nfc_ranges, sizeof(nfc_ranges) / sizeof(nfc_ranges[0]), cp);
    *qc = v & 3;
    *ccc = v >> 2;
}
""")


def main():
    cls = [0] * MAXCP
    for cp in range(MAXCP):
        cls[cp] = classes(cp)
    qc, ccc = nfc_tables()
    self_check(cls, qc, ccc)
    # The fast path in utab_nfc() assumes that nothing below U+0300 has NFC data.
    assert all(qc[cp] == 0 and ccc[cp] == 0 for cp in range(0x300)), "nfc fast path"
    emit(cls, qc, ccc)


if __name__ == "__main__":
    main()
