#!/bin/sh
# make bench: CPU benchmarks of the engine and the native eval stages, printed as one table.
#
#   sh tests/bench.sh BINDIR      (make bench builds BINDIR and BINDIR/../bench/bench_engine)
#
# Rows follow STYLE 3.5 (op,variant,shape,dtype,us,GB/s,git_sha,gpu) plus a last column with the
# derived figure (GFLOP/s, tokens/s, ms/token). Measured:
#   - SGEMM / GEMV / SYRK throughput (bench_engine kernels);
#   - tiny-a (tests/data/tiny-exaone4): prefill of 512 tokens and decode after it (bench_engine);
#   - the EXAONE-4.0-1.2B shape: a synthetic BF16 checkpoint written by `exaq-worker synth` into
#     a temp dir (2.6 GB; removed afterwards), prefill of 128 tokens and decode; decode in BF16,
#     W4A16 g128 and W8A16 with the W4A16/BF16 and W8A16/BF16 ratios (bench_qmatmul model); one
#     training step of 64 tokens (bench_grad, about 10 GB: skipped under 12 GB available);
#     skipped with a message when the temp dir has less than 4 GB free or the machine less than
#     6 GB available memory (or EXAQ_BENCH_SKIP_1B=1);
#   - the native eval stages through `exaq-worker run`, wall time including the model load: ppl on
#     tiny-a (200 windows of 512, the README protocol), mcqa (400 items), speed (128 + 128);
#   - quantized linears (bench_qmatmul gemv): T=1 GEMV of BF16 vs int8 codes (w8), W4 as int8
#     codes (w4i8) and packed nibbles (w4, the engine's format), W4 asymmetric, FP8 and W4 with
#     g_idx, on three L3-resident shapes and one DRAM-resident one; and the speed stage on tiny-a
#     quantized by the quantize stage (RTN W4A16 g128, RTN W8A16) beside the BF16 one;
#   - GPTQ on one tiny-a layer (bench_gptq: gptq_prepare and the column loop per linear);
#   - training on tiny-a (bench_grad): forward + backward of one 512-token sequence (every
#     parameter's gradient, cross-entropy) and the fp32 forward alone, in tokens/s;
#   - GPTQ W4A16 g128 of tiny-a through `exaq-worker run quantize`, 128 calibration windows of
#     512 tokens included (goal: <= 60 s on 2 cores).
# The rows are also appended to results/bench.csv. Environment: EXAQ_BENCH_TMP (default /tmp),
# EXAQ_THREADS (threads; default all CPUs). Takes 1-3 minutes on 2 cores, plus several minutes for
# the 1.2B shape (docs/perf.md).
set -eu
BIN=${1:?usage: sh tests/bench.sh BINDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH=$BIN/../bench/bench_engine
QBENCH=$BIN/../bench/bench_qmatmul
GBENCH=$BIN/../bench/bench_gptq
TBENCH=$BIN/../bench/bench_grad
W=$BIN/exaq-worker
TINY=tests/data/tiny-exaone4
DATA=tests/data/tiny-a
for f in "$BENCH" "$QBENCH" "$GBENCH" "$TBENCH" "$W"; do
    [ -x "$f" ] || { echo "bench: $f is missing (run: make bench)" >&2; exit 1; }
done
[ -f "$TINY/model.safetensors" ] || { echo "bench: $TINY is missing" >&2; exit 1; }

TMP=$(mktemp -d "${EXAQ_BENCH_TMP:-/tmp}/exaq-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM
ROWS=$TMP/rows.csv
: >"$ROWS"
SHA=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
GPU=
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr ' ,' '__' || true)
fi
[ -n "$GPU" ] || GPU=none
NCPU=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?')
CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || echo unknown)

say() { printf '%s\n' "$*" >&2; }

# The CSV rows of bench_engine, with a model dir replaced by a label.
engine() {
    label=$1
    shift
    say "bench: bench_engine $*"
    "$BENCH" "$@" >"$TMP/out" 2>"$TMP/err" || {
        say "bench: bench_engine $* failed:"
        cat "$TMP/err" >&2
        return 1
    }
    sed 's/^/  /' "$TMP/out" | grep -v '^  csv,' >&2 || true
    grep '^csv,' "$TMP/out" | sed -e 's/^csv,//' | awk -F, -v OFS=, -v l="$label" \
        '{ if (l != "") $2 = l; print }' >>"$ROWS"
}

now() { date +%s.%N; }

# stage KIND SPEC LABEL SHAPE [INPUT DTYPE]: wall time of `exaq-worker run KIND` (model load
# included) on INPUT (default tiny-a); DTYPE labels the row (default bf16).
stage() {
    say "bench: exaq-worker run $1 $2 ${5:-}"
    t0=$(now)
    "$W" run "$1" --input "${5:-$TINY}" --spec "$2" >"$TMP/m.json" 2>"$TMP/err" || {
        say "bench: the $1 stage failed:"
        tail -n 5 "$TMP/err" >&2
        return 1
    }
    t1=$(now)
    say "  metrics: $(cat "$TMP/m.json")"
    awk -v a="$t0" -v b="$t1" -v op="stage_$1" -v v="$3" -v s="$4" -v sha="$SHA" -v gpu="$GPU" \
        -v dt="${6:-bf16}" \
        'BEGIN { printf "%s,%s,%s,%s,%.1f,,%s,%s\n", op, v, s, dt, (b - a) * 1e6, sha, gpu }' >>"$ROWS"
    cp "$TMP/m.json" "$TMP/$1${6:+-$6}.json"
}

# speed_rows DTYPE: the speed stage's own figures (medians of 3) from $TMP/speed[-DTYPE].json.
speed_rows() {
    f=$TMP/speed.json
    [ "$1" = bf16 ] || f=$TMP/speed-$1.json
    jq -r --arg sha "$SHA" --arg gpu "$GPU" --arg dt "$1" \
        '"stage_speed_prefill,tiny-a,T128,\($dt),\(128 / .prefill_tok_s * 1e7 | round / 10),,\($sha),\($gpu)",
         "stage_speed_decode,tiny-a,ctx128,\($dt),\(.time_per_token * 1e7 | round / 10),,\($sha),\($gpu)"' \
        "$f" >>"$ROWS" 2>/dev/null || say "bench: jq missing; speed-stage rows left out"
}

say "bench: $CPU, $NCPU CPUs, GPU: $GPU, git $SHA"

# ---- kernels --------------------------------------------------------------------------------
engine "" kernels

# ---- quantized linears ----------------------------------------------------------------------
say "bench: bench_qmatmul gemv"
if "$QBENCH" gemv >"$TMP/qout" 2>"$TMP/err"; then
    grep -v '^csv,' "$TMP/qout" | sed 's/^/  /' >&2 || true
    grep '^csv,' "$TMP/qout" | sed -e 's/^csv,//' >>"$ROWS"
else
    say "bench: bench_qmatmul gemv failed:"
    cat "$TMP/err" >&2
fi

# ---- GPTQ on one tiny-a layer (factorization and column loop apart) -----------------------
say "bench: bench_gptq"
if "$GBENCH" >"$TMP/gout" 2>"$TMP/err"; then
    grep '^csv,' "$TMP/gout" | sed -e 's/^csv,//' >>"$ROWS"
else
    say "bench: bench_gptq failed:"
    cat "$TMP/err" >&2
fi

# ---- tiny-a ---------------------------------------------------------------------------------
engine tiny-a model "$TINY" 512

# ---- training on tiny-a (worker/train/grad.c) -----------------------------------------------
say "bench: bench_grad $TINY 512"
if "$TBENCH" "$TINY" 512 "$DATA/val.ids.u32" >"$TMP/tout" 2>"$TMP/err"; then
    grep -v '^csv,' "$TMP/tout" | sed 's/^/  /' >&2 || true
    grep '^csv,' "$TMP/tout" | sed -e 's/^csv,//' >>"$ROWS"
else
    say "bench: bench_grad failed:"
    cat "$TMP/err" >&2
fi

# ---- the 1.2B shape -------------------------------------------------------------------------
free_kb=$(df -Pk "$TMP" | awk 'NR == 2 { print $4 }')
avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo 2>/dev/null || echo 0)
if [ -n "${EXAQ_BENCH_SKIP_1B:-}" ]; then
    say "bench: skipping the 1.2B shape (EXAQ_BENCH_SKIP_1B is set)"
    SKIP_1B="skipped (EXAQ_BENCH_SKIP_1B)"
elif [ "${free_kb:-0}" -lt 4000000 ]; then
    say "bench: skipping the 1.2B shape: $TMP has $((free_kb / 1000)) MB free, it needs 4000"
    SKIP_1B="skipped (not enough disk in $TMP)"
elif [ "${avail_kb:-0}" -lt 6000000 ]; then
    say "bench: skipping the 1.2B shape: $((avail_kb / 1000)) MB of memory available, it needs 6000"
    SKIP_1B="skipped (not enough memory)"
else
    SKIP_1B=
    say "bench: exaq-worker synth --shape 1.2b (2.6 GB into $TMP)"
    "$W" synth --out "$TMP/exaone-1.2b" --shape 1.2b >&2
    engine exaone-1.2b-synth model "$TMP/exaone-1.2b" 128
    # Decode of the same checkpoint in BF16, W4A16 g128 and W8A16 (RTN of every linear, BF16
    # head), interleaved with a second BF16 run; the ratios use the faster BF16 figure.
    : >"$TMP/dec"
    for q in none 'W4A16 128' 'W8A16 -1' none; do
        say "bench: bench_qmatmul model exaone-1.2b $q"
        # shellcheck disable=SC2086 # $q is the scheme and the group size
        if "$QBENCH" model "$TMP/exaone-1.2b" $q >"$TMP/qout" 2>"$TMP/err"; then
            grep -v '^csv,' "$TMP/qout" | sed 's/^/  /' >&2 || true
            grep '^csv,' "$TMP/qout" | sed -e 's/^csv,//' -e 's/^decode,[^,]*,/decode,exaone-1.2b-synth,/' |
                tee -a "$TMP/dec" >>"$ROWS"
        else
            say "bench: bench_qmatmul model $q failed:"
            tail -n 5 "$TMP/err" >&2
        fi
    done
    awk -F, '$4 == "bf16" && (b == "" || $5 < b) { b = $5 } $4 == "W4A16" { w4 = $5 }
        $4 == "W8A16" { w8 = $5 }
        END { if (b == "" || w4 == "" || w8 == "") { print "bench: decode ratios: a run is missing"; exit }
              printf "bench: decode 1.2b ctx128: bf16 %.1f ms, W4A16/BF16 %.3f (goal <= 0.5), W8A16/BF16 %.3f (goal <= 0.65)\n",
                  b / 1e3, w4 / b, w8 / b }' "$TMP/dec" >&2
    # Training step of the same shape (fp32 weights and gradients: about 10 GB resident).
    if [ "${avail_kb:-0}" -ge 12000000 ]; then
        say "bench: bench_grad exaone-1.2b 64"
        if "$TBENCH" "$TMP/exaone-1.2b" 64 >"$TMP/tout" 2>"$TMP/err"; then
            grep -v '^csv,' "$TMP/tout" | sed 's/^/  /' >&2 || true
            grep '^csv,' "$TMP/tout" | sed -e 's/^csv,//' -e 's/^\(train_[a-z_]*\),[^,]*,/\1,exaone-1.2b-synth,/' >>"$ROWS"
        else
            say "bench: bench_grad on the 1.2B shape failed:"
            tail -n 5 "$TMP/err" >&2
        fi
    else
        say "bench: skipping the 1.2B training step: $((avail_kb / 1000)) MB available, it needs 12000"
    fi
    rm -rf "$TMP/exaone-1.2b"
fi

# ---- native eval stages on tiny-a -----------------------------------------------------------
stage ppl "{\"ids\":\"$ROOT/$DATA/val.ids.u32\",\"max_windows\":200,\"seq_len\":512}" tiny-a 200x512
stage mcqa "{\"items\":\"$ROOT/$DATA/mcqa.jsonl\",\"limit\":0}" tiny-a 400items
SPEED='{"gen_tokens":128,"prompt_tokens":128,"repeats":3}'
stage speed "$SPEED" tiny-a P128G128R3
# The speed stage's own figures (medians of 3), as rows of their own.
speed_rows bf16
# The same on tiny-a quantized by the quantize stage (RTN): the linears compute from their codes.
for q in 'w4a16 {"method":"rtn","scheme":"W4A16","group_size":128}' \
    'w8a16 {"method":"rtn","scheme":"W8A16","group_size":-1}'; do
    dt=${q%% *}
    say "bench: exaq-worker run quantize ${q#* }"
    if "$W" run quantize --input "$TINY" --output "$TMP/tiny-$dt" --spec "${q#* }" \
        >/dev/null 2>"$TMP/err"; then
        stage speed "$SPEED" tiny-a P128G128R3 "$TMP/tiny-$dt/model" "$dt" && speed_rows "$dt"
    else
        say "bench: quantize $dt failed:"
        tail -n 5 "$TMP/err" >&2
    fi
    rm -rf "$TMP/tiny-$dt"
done

# ---- GPTQ on tiny-a ---------------------------------------------------------------------------
# GPTQ W4A16 g128 of the whole tiny model, calibration included (128 windows of 512 tokens of
# calib.ids.u32: read, forward passes for the Hessians, the column loop, the compressed-tensors
# write), wall time of `exaq-worker run quantize`. Goal: <= 60 s on 2 cores.
GPTQ="{\"method\":\"gptq\",\"scheme\":\"W4A16\",\"group_size\":128,\"calibration\":{\"ids\":\"$ROOT/$DATA/calib.ids.u32\",\"samples\":128,\"seq_len\":512}}"
say "bench: exaq-worker run quantize $GPTQ"
t0=$(now)
if "$W" run quantize --input "$TINY" --output "$TMP/tiny-gptq" --spec "$GPTQ" >/dev/null 2>"$TMP/err"; then
    t1=$(now)
    awk -v a="$t0" -v b="$t1" -v sha="$SHA" -v gpu="$GPU" \
        'BEGIN { printf "stage_quantize_gptq,tiny-a,128x512,w4a16,%.1f,,%s,%s\n", (b - a) * 1e6, sha, gpu }' >>"$ROWS"
else
    say "bench: the GPTQ quantize stage failed:"
    tail -n 5 "$TMP/err" >&2
fi
rm -rf "$TMP/tiny-gptq"

# ---- the table ------------------------------------------------------------------------------
# Derived figure per op: GFLOP/s from the shape for sgemm/syrk, tokens/s for prefill and the ppl
# stage, ms/token for decode, GB/s for gemv (already in the row).
table() {
    awk -F, -v OFS=, '
    function shp(s, a) { return split(s, a, "x") }
    {
        d = ""
        if ($1 == "sgemm" && shp($3, a) == 3) d = sprintf("%.1f GFLOP/s", 2 * a[1] * a[2] * a[3] / $5 / 1e3)
        else if ($1 == "syrk" && shp($3, a) == 2) d = sprintf("%.1f GFLOP/s (full product)", 2 * a[1] * a[2] * a[2] / $5 / 1e3)
        else if ($1 == "gemv" || $1 == "qgemv") d = sprintf("%.1f GB/s of weights", $6)
        else if ($1 == "train_fwd_bwd" || $1 == "train_fwd") { t = substr($3, 2); d = sprintf("%.0f tokens/s", t / ($5 / 1e6)) }
        else if ($1 == "prefill" || $1 == "stage_speed_prefill") { t = substr($3, 2); d = sprintf("%.0f tokens/s", t / ($5 / 1e6)) }
        else if ($1 == "decode" || $1 == "stage_speed_decode") d = sprintf("%.3f ms/token (%.1f tokens/s)", $5 / 1e3, 1e6 / $5)
        else if ($1 == "ppl" || $1 == "stage_ppl") { shp($3, a); d = sprintf("%.2f s wall (%.0f tokens/s)", $5 / 1e6, a[1] * a[2] / ($5 / 1e6)) }
        else if ($1 ~ /^stage_/) d = sprintf("%.2f s wall", $5 / 1e6)
        print $0, d
    }' "$ROWS"
}
echo "op,variant,shape,dtype,us,GB/s,git_sha,gpu,derived"
table
[ -z "$SKIP_1B" ] || echo "# exaone-1.2b-synth: $SKIP_1B"
[ "$GPU" != none ] || echo "# GPU: none on this machine (CPU figures only)"
echo "# $CPU, $NCPU CPUs, threads ${EXAQ_THREADS:-all}, $(date -u +%Y-%m-%d)"

# Keep the rows (results/ is git-ignored, machine-written CSVs only).
mkdir -p results
[ -s results/bench.csv ] || echo "op,variant,shape,dtype,us,GB/s,git_sha,gpu" >results/bench.csv
cat "$ROWS" >>results/bench.csv
say "bench: rows appended to results/bench.csv"
