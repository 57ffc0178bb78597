#!/usr/bin/env python3
"""Builds the test tokenizers of tests/data/tokenizers/ and their golden ids with HF `tokenizers`.

Development machine only: exaq and its tests never run Python; they read what this writes.

    python3 tests/tools/make_tokenizer_goldens.py [--out tests/data/tokenizers]

What it writes (checked with tokenizers 0.23.3; deterministic except the unigram files, since
the Unigram trainer gives slightly different pieces from run to run):

  mixed.zip               mixed.txt: about 1.2 MB of mixed text (code, English, Korean, emoji,
                          whitespace runs, rare and unassigned-looking Unicode, literal
                          special-token strings), generated from the text written below with a
                          seeded PRNG; and probes.txt, short edge cases, one per line
  <name>/tokenizer.json   a small tokenizer trained here on a different sample of that text
  variants.json, .zip     edits of those tokenizers (other options: no byte_fallback, unk,
                          prepend_scheme never, no decoder, Strip, normalized added tokens,
                          ignore_merges, a Unigram behind the legacy normalizers) and their
                          goldens on the first 150 KB of mixed.txt (slice.txt) and the probes
  <name>/golden.zip       ids.u32 (little-endian uint32: encode(mixed.txt,
                          add_special_tokens=False)), decoded.txt (decode(ids,
                          skip_special_tokens=False)), and the same two for every line of
                          probes.txt (probes.ids.u32 with a uint32 count before each line's
                          ids; probes.decoded.txt with one uint32 byte length before each
                          decoded line)

The tokenizers, each in the shape a real family ships it:

  spm-bpe-legacy  Llama-2 / Mistral-7B-v0.1 / MiniCPM: BPE with byte_fallback, fuse_unk and
                  <unk>; normalizer Sequence[Prepend("▁"), Replace(" ", "▁")], no
                  pre-tokenizer; decoder Sequence[Replace("▁", " "), ByteFallback, Fuse,
                  Strip(" ", 1, 0)]
  spm-bpe-meta    the same model as the newer (legacy=false) conversions write it: pre-tokenizer
                  Metaspace(prepend_scheme "first", split false), the same decoder
  spm-bpe-split   Metaspace(prepend_scheme "always", split true), decoder Sequence[ByteFallback,
                  Metaspace]
  unigram         Unigram with byte_fallback and <unk>, Metaspace(always, split), decoder
                  Sequence[ByteFallback, Metaspace]
  llama3          byte-level BPE with Llama-3's Split regex, ByteLevel(use_regex false) and the
                  <|begin_of_text|>-style special tokens
  qwen2           byte-level BPE with Qwen2's NFC normalizer, Split regex and special tokens
"""

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # the Unigram trainer is only deterministic on one thread

import argparse
import io
import json
import random
import struct
import sys
import unicodedata
import zipfile

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, trainers)

ZIP_DATE = (2026, 12, 7, 0, 0, 0)

LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ---- the text --------------------------------------------------------------------------------

ENGLISH = """\
The quick brown fox jumps over the lazy dog. It's a sentence that uses every letter, and we'd
rather not forget it. They're testing the tokenizer; you'll see what they've done.
Quantization maps each weight to one of a few levels, and the scale is chosen per group of 128
columns. GPTQ updates the remaining columns with the inverse Hessian, so the error of one column
is spread over the others. Perplexity is measured on held-out text: lower is better, but a small
change can hide a large one on a single task.
In 1984, 3.14159 was close enough; by 2026 the numbers read 1,234,567.89 and 0x7fffffff.
"Don't," she said. 'I won't.' He asked: why?! -- and nobody answered... (not even Bob).
Mr. O'Neil's dog isn't HERE; it's THERE. WE'LL SEE. I'M SURE. YOU'D KNOW. THEY'VE GONE.
A URL like https://example.com/path?q=1&r=two#frag and an e-mail like a.b@c.org appear too.
"""

KOREAN = """\
안녕하세요. 오늘은 토크나이저를 시험하는 날입니다.
양자화는 가중치를 몇 개의 값으로 바꾸는 방법이고, 그룹마다 스케일을 따로 정합니다.
한국어 문장은 띄어쓰기가 중요합니다: 아버지가방에들어가신다 / 아버지가 방에 들어가신다.
서울특별시 강남구 테헤란로 123, 전화 02-1234-5678. 가격은 15,000원입니다!
"왜요?"라고 물었더니 그는 웃기만 했다. 모델의 혼란도(perplexity)가 낮을수록 좋다.
ㄱㄴㄷㄹ ㅏㅑㅓㅕ 같은 자모도 섞여 있고, 한자 漢字와 English words가 함께 나온다.
"""

CODE = [
    """\
static int tok_encode_all(const struct tok *t, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\n' && i + 1 < n)
            continue; /* skip */
    }
    return n > 0 ? (int)n : -1;
}
""",
    """\
def perplexity(nll: list[float], n_tokens: int) -> float:
    \"\"\"exp of the mean negative log-likelihood.\"\"\"
    if n_tokens <= 0:
        raise ValueError(f"n_tokens={n_tokens!r} must be > 0")
    return math.exp(sum(nll) / n_tokens)  # nats
""",
    """\
{"model": {"type": "BPE", "vocab": {"<unk>": 0, "a": 1}, "merges": ["a b", "ab c"]},
 "added_tokens": [{"id": 0, "content": "<unk>", "special": true}], "x": [1, 2.5e-3, null]}
""",
    """\
#!/bin/sh
set -eu
for f in build/*.o; do
	[ -s "$f" ] && echo "ok $f" || echo "empty: $f" >&2
done
make -j2 all 2>&1 | grep -E '^(warning|error):' || true
""",
    """\
fn main() {
    let v: Vec<u32> = (0..10).map(|x| x * x).collect();
    println!("{:?} {}", v, v.iter().sum::<u32>());
}
""",
]

EMOJI = [
    "😀", "🙂", "🚀", "🔥", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇰🇷", "🇺🇸", "❤️", "✨", "🤖",
    "🧪", "🎉", "☕", "1️⃣", "🫠", "🦀",
]

RARE = [
    "Ωμέγα", "Привет, мир", "שלום", "مرحبا بالعالم", "สวัสดี", "नमस्ते दुनिया", "こんにちは世界",
    "中文分词测试", "𝐀𝐁𝐂 𝑥𝑦𝑧", "𠀀𠀁𠀂", "ſtraße", "ǅ ǈ ǋ", "½ ⅓ ¼", "①②③", "™ © ®",
    "→ ⇒ ∀x∈ℝ: x²≥0", "┌─┬─┐", "\u00a0nbsp\u00a0", "\u3000全角\u3000", "zero\u200bwidth",
    "\ufeffbom", "\ue000\ue001", "\u2028ls\u2029ps", "\x01\x02\x1f\x7f", "\ufffd",
    "ÅÉÎÕÜ åéîõü", "\U0001f9ff\U0001fae8", "ʰʲʷ", "\u0e01\u0e34\u0e19",
]

SPECIAL_LITERALS = [
    "<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|endoftext|>", "<|im_start|>",
    "<|im_end|>", "<0x41>", "<0xZZ>", "▁", "▁▁x", "<s", "s>",
]

WS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n   ", "    \n\n  ", "\u3000"]


def words(rng, text):
    w = text.split()
    return w[rng.randrange(len(w))]


def paragraph(rng, sources):
    kind = rng.randrange(10)
    if kind < 3:
        lines = ENGLISH.splitlines()
        return " ".join(rng.choice(lines) for _ in range(rng.randint(1, 4)))
    if kind < 5:
        lines = KOREAN.splitlines()
        return " ".join(rng.choice(lines) for _ in range(rng.randint(1, 3)))
    if kind < 7:
        code = rng.choice(CODE)
        ident = "".join(rng.choice("abcxyz_") for _ in range(rng.randint(1, 8)))
        return code.replace("n", ident, 1) if rng.random() < 0.5 else code
    parts = []
    for _ in range(rng.randint(3, 12)):
        r = rng.random()
        if r < 0.2:
            parts.append(rng.choice(EMOJI) * rng.randint(1, 3))
        elif r < 0.35 and sources["rare"]:
            parts.append(rng.choice(sources["rare"]))
        elif r < 0.45:
            parts.append(rng.choice(SPECIAL_LITERALS))
        elif r < 0.6:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
        elif r < 0.8:
            parts.append(words(rng, ENGLISH))
        else:
            parts.append(words(rng, KOREAN))
        parts.append(rng.choice(WS) if rng.random() < 0.3 else " ")
    return "".join(parts)


def make_text(seed, size, rare=True):
    rng = random.Random(seed)
    sources = {"rare": RARE if rare else []}
    out, n = [], 0
    while n < size:
        p = paragraph(rng, sources) + rng.choice(["\n", "\n\n", " ", "\n\n\n", "\t\n", "  \n"])
        out.append(p)
        n += len(p.encode("utf-8"))
    return "".join(out)


PROBES = [
    "", " ", "  ", "a", " a", "a ", "  a  b  ", "\n", "\n\n a", "▁", "▁a", "a▁", "▁▁", " ▁ ",
    "<s>", " <s>", "<s> ", "a<s>b", "<s><s>", "</s>hello", "hello</s>", "<unk>", "<0x41>",
    "<|endoftext|>", " <|im_start|>user\nhi<|im_end|>\n", "<|begin_of_text|>Hi<|eot_id|>",
    "😀", " 😀", "👨‍👩‍👧‍👦x", "\U0010fffd", "\x00", "a\x00b", "한국어", " 한국어 ", "ſ", "'S 'll",
    "x    y", "x\t\ty", "x \n y", "123456789", "\u3000", "e\u00e9", "\ufeff",
]

# ---- the tokenizers ----------------------------------------------------------------------------

BYTE_TOKENS = ["<0x%02X>" % b for b in range(256)]


def spm_bpe_model(train_text):
    """A Llama-2-shaped BPE: <unk>, <s>, </s>, the 256 byte tokens, then the learned pieces."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tr = trainers.BpeTrainer(vocab_size=3500, limit_alphabet=220, show_progress=False,
                             special_tokens=[])
    tk.train_from_iterator(train_text.splitlines(), trainer=tr)
    learned = json.loads(tk.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in BYTE_TOKENS:
        vocab[b] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    return vocab, merges


def spm_bpe(vocab, merges, style):
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                              fuse_unk=True))
    if style == "legacy":
        tk.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                        decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    elif style == "meta":
        # What transformers' LlamaConverter writes with legacy=False.
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                    split=False)
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                        decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                    split=True)
        tk.decoder = decoders.Sequence([
            decoders.ByteFallback(),
            decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tk.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tk


def unigram(train_text):
    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tr = trainers.UnigramTrainer(vocab_size=3000, unk_token="<unk>", show_progress=False,
                                 special_tokens=["<unk>", "<s>", "</s>"], max_piece_length=12)
    tk.train_from_iterator(train_text.splitlines(), trainer=tr)
    model = json.loads(tk.to_str())["model"]
    pieces = [(p, s) for p, s in model["vocab"]]
    have = {p for p, _ in pieces}
    lo = min(s for _, s in pieces)
    pieces += [(b, lo - 1.0) for b in BYTE_TOKENS if b not in have]
    out = Tokenizer(models.Unigram(pieces, unk_id=model["unk_id"], byte_fallback=True))
    out.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    out.decoder = decoders.Sequence([decoders.ByteFallback(),
                                     decoders.Metaspace(replacement="▁", prepend_scheme="always")])
    out.add_special_tokens(["<unk>", "<s>", "</s>"])
    return out


def byte_level(train_text, regex, nfc, specials):
    tk = Tokenizer(models.BPE())
    if nfc:
        tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=4000, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             special_tokens=[])
    tk.train_from_iterator(train_text.splitlines(keepends=True), trainer=tr)
    tk.add_special_tokens(specials)
    return tk


# ---- output --------------------------------------------------------------------------------


def u32s(xs):
    return struct.pack("<%dI" % len(xs), *xs)


def write_zip(path, members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            zi = zipfile.ZipInfo(name, ZIP_DATE)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            z.writestr(zi, data, compresslevel=9)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def goldens(tk, text, probes):
    enc = tk.encode(text, add_special_tokens=False).ids
    dec = tk.decode(enc, skip_special_tokens=False)
    pids, pdec = [], []
    for p in probes:
        ids = tk.encode(p, add_special_tokens=False).ids
        d = tk.decode(ids, skip_special_tokens=False).encode("utf-8")
        pids += [len(ids)] + ids
        pdec.append(struct.pack("<I", len(d)) + d)
    return [("ids.u32", u32s(enc)), ("decoded.txt", dec.encode("utf-8")),
            ("probes.ids.u32", u32s(pids)), ("probes.decoded.txt", b"".join(pdec))], len(enc)


SLICE = 150_000  # bytes of mixed.txt the variants encode

LEGACY_NORM = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
LEGACY_DEC = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
    {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def variants(base_json):
    """Edits of the six tokenizers for the options they do not use themselves: (name, base,
    [(path, value)]). The C test applies the same edits to the base tokenizer.json."""
    extra = Tokenizer.from_str(base_json["spm-bpe-legacy"])
    extra.add_tokens([AddedToken("<mask>", lstrip=True, normalized=True),
                      AddedToken("\u2581world", normalized=True),
                      AddedToken("ok!", single_word=True, normalized=False)])
    added = json.loads(extra.to_str())["added_tokens"]
    ms = lambda scheme, split: {"type": "Metaspace", "replacement": "\u2581",
                                "prepend_scheme": scheme, "split": split}
    return [
        ("bpe-unk", "spm-bpe-split", [(["model", "byte_fallback"], False),
                                      (["model", "fuse_unk"], False)]),
        ("bpe-unk-fused", "spm-bpe-legacy", [(["model", "byte_fallback"], False)]),
        ("bpe-never-nodecoder", "spm-bpe-split", [(["pre_tokenizer"], ms("never", True)),
                                                  (["decoder"], None)]),
        ("bpe-always-nosplit", "spm-bpe-meta", [(["pre_tokenizer"], ms("always", False)),
                                                (["decoder"], ms("always", False))]),
        ("bpe-strip", "spm-bpe-legacy", [(["decoder"], {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Strip", "content": " ", "start": 0, "stop": 1},
            {"type": "Strip", "content": " ", "start": 2, "stop": 0}]})]),
        ("bpe-added-normalized", "spm-bpe-legacy", [(["added_tokens"], added)]),
        ("bpe-ignore-merges", "spm-bpe-split", [(["model", "ignore_merges"], True)]),
        ("unigram-unk", "unigram", [(["model", "byte_fallback"], False)]),
        ("unigram-legacy", "unigram", [(["normalizer"], LEGACY_NORM), (["pre_tokenizer"], None),
                                       (["decoder"], LEGACY_DEC)]),
        ("llama3-ignore-merges", "llama3", [(["model", "ignore_merges"], True)]),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/tokenizers")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    text = make_text(seed=20261207, size=1_200_000)
    train = make_text(seed=7, size=400_000, rare=False)
    # The Qwen2 tokenizer's NFC step is implemented as a proven no-op; keep the text NFC.
    assert unicodedata.is_normalized("NFC", text), "mixed text must be NFC"
    write_zip(os.path.join(a.out, "mixed.zip"),
              [("mixed.txt", text.encode("utf-8")),
               ("probes.txt", "".join(p.replace("\n", "\\n") + "\n" for p in PROBES)
                .encode("utf-8"))])
    probes = PROBES

    vocab, merges = spm_bpe_model(train)
    toks = {
        "spm-bpe-legacy": spm_bpe(vocab, merges, "legacy"),
        "spm-bpe-meta": spm_bpe(vocab, merges, "meta"),
        "spm-bpe-split": spm_bpe(vocab, merges, "split"),
        "unigram": unigram(train),
        "llama3": byte_level(train, LLAMA3_RE, False,
                             ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                              "<|start_header_id|>", "<|end_header_id|>"]),
        "qwen2": byte_level(train, QWEN2_RE, True,
                            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    }
    for name, tk in toks.items():
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        tk.save(os.path.join(d, "tokenizer.json"), pretty=False)
        # Reload what was written, so the goldens come from the file the C side reads.
        tk = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        members, n = goldens(tk, text, probes)
        write_zip(os.path.join(d, "golden.zip"), members)
        print("%-15s %6d bytes json, %7d ids" %
              (name, os.path.getsize(os.path.join(d, "tokenizer.json")), n))
    print("mixed.txt: %d bytes" % len(text.encode("utf-8")))

    base_json = {n: open(os.path.join(a.out, n, "tokenizer.json"), encoding="utf-8").read()
                 for n in toks}
    raw = text.encode("utf-8")[:SLICE]
    piece = raw.decode("utf-8", errors="ignore")
    members, listing = [], []
    for name, base, patch in variants(base_json):
        j = json.loads(base_json[base])
        for path, value in patch:
            obj = j
            for k in path[:-1]:
                obj = obj[k]
            obj[path[-1]] = value
        tk = Tokenizer.from_str(json.dumps(j))
        got, n = goldens(tk, piece, probes)
        members += [(name + "." + m, data) for m, data in got]
        listing.append({"name": name, "base": base,
                        "patch": [{"path": p, "value": v} for p, v in patch]})
        print("variant %-21s %6d ids" % (name, n))
    members.append(("slice.txt", piece.encode("utf-8")))
    write_zip(os.path.join(a.out, "variants.zip"), members)
    with open(os.path.join(a.out, "variants.json"), "w", encoding="utf-8") as f:
        json.dump(listing, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
