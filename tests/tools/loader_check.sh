#!/bin/sh
# loader_check.sh: quantizes tiny-a with every scheme exaq writes, computes exaq's own logits
# for each checkpoint, and runs tests/tools/check_transformers.py on them (transformers +
# compressed-tensors, the real loader). Not part of `make test`: it needs PyTorch.
#
#   tests/tools/loader_check.sh OUTDIR [PYTHON]
#
# Run from the repository root. EXAQ_BIN names the directory of exaq-worker (default
# build/release/bin). PYTHON (default python3) must import torch, transformers and
# compressed_tensors. The exit status is the check's: 0 when every checkpoint passes.
# docs/quantization.md records the commands and results.
set -eu
OUT=${1:?usage: tests/tools/loader_check.sh OUTDIR [PYTHON]}
PY=${2:-python3}
W=${EXAQ_BIN:-build/release/bin}/exaq-worker
R=$(pwd)
IDS=$R/tests/data/tiny-a/val.ids.u32
[ -x "$W" ] || { echo "loader_check: no $W (run make, or set EXAQ_BIN)" >&2; exit 1; }
mkdir -p "$OUT"
CAL="\"calibration\":{\"ids\":\"$R/tests/data/tiny-a/calib.ids.u32\",\"samples\":128,\"seq_len\":512}"

# quant NAME SPEC: OUT/NAME (the checkpoint) and OUT/NAME.f32 (exaq's logits of 320 val ids)
quant() {
    rm -rf "$OUT/tmp-$1" "$OUT/$1"
    if ! "$W" run quantize --input tests/data/tiny-exaone4 --output "$OUT/tmp-$1" --spec "$2" \
        >/dev/null 2>"$OUT/$1.err"; then
        tail -n 5 "$OUT/$1.err" >&2
        exit 1
    fi
    mv "$OUT/tmp-$1/model" "$OUT/$1"
    rm -rf "$OUT/tmp-$1" "$OUT/$1.err"
    "$W" logits --input "$OUT/$1" --ids "$IDS" --n 320 --out "$OUT/$1.f32" >/dev/null
    echo "loader_check: $1 quantized" >&2
}

rm -rf "$OUT/bf16"
cp -r tests/data/tiny-exaone4 "$OUT/bf16"
"$W" logits --input "$OUT/bf16" --ids "$IDS" --n 320 --out "$OUT/bf16.f32" >/dev/null
quant w4a16-g128 "{\"method\":\"gptq\",\"scheme\":\"W4A16\",\"group_size\":128,$CAL}"
quant w4a16-g64-actorder-group "{\"method\":\"gptq\",\"scheme\":\"W4A16\",\"group_size\":64,\"actorder\":\"group\",$CAL}"
quant w4a16-g64-actorder-static "{\"method\":\"gptq\",\"scheme\":\"W4A16\",\"group_size\":64,\"actorder\":\"static\",$CAL}"
quant w4a16-asym-g128 '{"method":"rtn","scheme":"W4A16_ASYM","group_size":128}'
quant w8a16 '{"method":"rtn","scheme":"W8A16","group_size":-1}'
# The AWQ study's zero-point checkpoints: AWQ l2 with greedy rounding, GPTQ g256, 8-bit groups.
quant w4a16-asym-g128-awq-l2-greedy "{\"method\":\"awq\",\"scheme\":\"W4A16_ASYM\",\"group_size\":128,\"salience\":\"l2\",\"rounding\":\"greedy\",$CAL}"
quant w4a16-asym-g256-gptq "{\"method\":\"gptq\",\"scheme\":\"W4A16_ASYM\",\"group_size\":256,$CAL}"
quant w8a16-asym-g64 '{"method":"rtn","scheme":"W8A16_ASYM","group_size":64}'
quant w8a8 "{\"method\":\"gptq\",\"scheme\":\"W8A8\",\"group_size\":-1,$CAL}"
quant fp8-dynamic '{"method":"rtn","scheme":"FP8_DYNAMIC"}'
quant fp8-static "{\"method\":\"rtn\",\"scheme\":\"FP8\",$CAL}"

ARGS=
for m in bf16 w4a16-g128 w4a16-g64-actorder-group w4a16-g64-actorder-static w4a16-asym-g128 w8a16 \
    w4a16-asym-g128-awq-l2-greedy w4a16-asym-g256-gptq w8a16-asym-g64; do
    ARGS="$ARGS $OUT/$m:$OUT/$m.f32"
done
for m in w8a8 fp8-dynamic fp8-static; do
    "$W" logits --input "$OUT/$m" --ids "$IDS" --n 320 --out "$OUT/$m.wo.f32" --weights-only >/dev/null
    ARGS="$ARGS $OUT/$m:$OUT/$m.f32:$OUT/$m.wo.f32"
done
# shellcheck disable=SC2086 # ARGS is a list of words without spaces
exec "$PY" tests/tools/check_transformers.py "$IDS" 320 $ARGS
