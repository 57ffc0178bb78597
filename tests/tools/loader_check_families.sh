#!/bin/sh
# loader_check_families.sh: for each test model of tests/data/families (llama, qwen2, qwen3,
# mistral, minicpm), writes GPTQ W4A16 and AWQ W4A16 checkpoints (group 32) and a pruned one
# (2 of 3 layers) with exaq, computes exaq's logits of 128 val ids for each and for the BF16
# model, and runs tests/tools/check_transformers.py on all of them (transformers +
# compressed-tensors, the real loader; minicpm through tests/tools/minicpm_ref.py). Not part of
# `make test`: it needs PyTorch.
#
#   tests/tools/loader_check_families.sh OUTDIR [PYTHON]
#
# Run from the repository root. EXAQ_BIN names the directory of exaq-worker (default
# build/release/bin). The exit status is the check's. docs/models.md records the result.
set -eu
OUT=${1:?usage: tests/tools/loader_check_families.sh OUTDIR [PYTHON]}
PY=${2:-python3}
W=${EXAQ_BIN:-build/release/bin}/exaq-worker
R=$(pwd)
IDS=$R/tests/data/tiny-a/val.ids.u32
N=128
[ -x "$W" ] || { echo "loader_check_families: no $W (run make, or set EXAQ_BIN)" >&2; exit 1; }
mkdir -p "$OUT"
CAL="\"calibration\":{\"ids\":\"$R/tests/data/tiny-a/calib.ids.u32\",\"samples\":16,\"seq_len\":128}"

# stage FAMILY NAME KIND SPEC: OUT/FAMILY-NAME and OUT/FAMILY-NAME.f32 (exaq's logits)
stage() {
    d=$OUT/$1-$2
    rm -rf "$d.tmp" "$d"
    if ! "$W" run "$3" --input "tests/data/families/$1" --output "$d.tmp" --spec "$4" \
        >/dev/null 2>"$d.err"; then
        tail -n 5 "$d.err" >&2
        exit 1
    fi
    mv "$d.tmp/model" "$d"
    rm -rf "$d.tmp" "$d.err"
    "$W" logits --input "$d" --ids "$IDS" --n $N --out "$d.f32" >/dev/null
    ARGS="$ARGS $d:$d.f32"
    echo "loader_check_families: $1 $2 written" >&2
}

ARGS=
for f in llama qwen2 qwen3 mistral minicpm; do
    rm -rf "$OUT/$f-bf16"
    cp -r "tests/data/families/$f" "$OUT/$f-bf16"
    rm -f "$OUT/$f-bf16/golden.safetensors"
    "$W" logits --input "$OUT/$f-bf16" --ids "$IDS" --n $N --out "$OUT/$f-bf16.f32" >/dev/null
    ARGS="$ARGS $OUT/$f-bf16:$OUT/$f-bf16.f32"
    stage $f gptq-w4a16 quantize "{\"method\":\"gptq\",\"scheme\":\"W4A16\",\"group_size\":32,$CAL}"
    stage $f awq-w4a16 quantize "{\"method\":\"awq\",\"scheme\":\"W4A16\",\"group_size\":32,$CAL}"
    stage $f pruned prune "{\"keep_layers\":2,$CAL}"
done
# shellcheck disable=SC2086 # ARGS is a list of words without spaces
exec "$PY" tests/tools/check_transformers.py "$IDS" $N $ARGS
