#!/usr/bin/env python3
"""Cross-check exaq's quantized checkpoints with the real loader (transformers +
compressed-tensors).

For every model dir given, load it with transformers in float32 (exaq computes in fp32 from
the exactly dequantized weights, so fp32 isolates format and loading differences from bf16
rounding), run the first N ids of an id file
through it, and compare the logits with exaq's own logits for the same model
(`exaq-worker logits --input DIR --ids FILE --n N --out DIR.f32`): the relative max difference
and the argmax agreement, against the golden tolerance of the engine (max |diff| <= 2% of max
|logit|, same argmax at >= 99% of positions). Not part of `make test` (it needs PyTorch);
docs/quantization.md records the command and the result.

usage: check_transformers.py IDS_FILE N MODEL_DIR:EXAQ_LOGITS.f32 ...
"""
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    ids_file, n = sys.argv[1], int(sys.argv[2])
    ids = np.fromfile(ids_file, dtype="<u4")[:n].astype(np.int64)
    ok = True
    for arg in sys.argv[3:]:
        model_dir, ours = arg.rsplit(":", 1)
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            ref = model(torch.tensor(ids)[None]).logits[0].float().numpy()
        mine = np.fromfile(ours, dtype="<f4").reshape(ref.shape)
        rel = np.abs(ref - mine).max() / np.abs(ref).max()
        agree = (ref.argmax(-1) == mine.argmax(-1)).mean()
        qc = getattr(model.config, "quantization_config", None)
        fmt = "dense" if qc is None else "compressed-tensors"
        good = rel <= 0.02 and agree >= 0.99
        ok &= good
        print(f"{model_dir}: format {fmt}: max|diff|/max|logit| = {rel:.4%}, "
              f"argmax agreement {agree:.2%} {'ok' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
