#!/usr/bin/env python3
"""GPTQ W4A16 side by side: llm-compressor's oneshot against exaq's quantize stage.

usage: compare_llmcompressor.py [--exaq-worker PATH] [--model DIR] [--data DIR] [--out DIR]
                                [--actorder none|static|both] [--skip-exaq]

Same model (default tests/data/tiny-exaone4), same settings on both sides: W4A16 (4-bit
symmetric, group 128), dampening 0.01, lm_head kept in BF16, calibration on the 128 consecutive
512-token windows at the start of DATA/calib.ids.u32 (default tests/data/tiny-a), act-order off
and/or static. Each side's checkpoint is compressed-tensors; both are scored by the same
evaluator, `exaq-worker run ppl` over 200 windows of 512 tokens of DATA/val.ids.u32, and the
base model is scored too. Prints one table with the perplexities and the wall times (exaq's
includes calibration and writing the checkpoint; llm-compressor's is the oneshot call).

Needs PyTorch, transformers and llm-compressor (`pip install llmcompressor==0.14.0`); runs on
the CPU. Not part of `make test`; docs/quantization.md section 3a records the command and the
result. exaq itself never needs Python.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES, SEQ = 128, 512


def read_ids(path, n):
    import numpy as np

    ids = np.fromfile(path, dtype="<u4")
    if ids.size < n:
        sys.exit(f"{path}: {ids.size} tokens, need {n}")
    return ids[:n].astype("int64")


def exaq_ppl(worker, model_dir, data):
    spec = {"ids": os.path.join(data, "val.ids.u32"), "max_windows": 200, "seq_len": SEQ}
    r = subprocess.run([worker, "run", "ppl", "--input", model_dir, "--spec", json.dumps(spec)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"exaq-worker run ppl on {model_dir} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)["ppl"]


def run_exaq(worker, model_dir, data, out, actorder):
    spec = {"method": "gptq", "scheme": "W4A16", "group_size": 128, "dampening": 0.01,
            "actorder": actorder,
            "calibration": {"ids": os.path.join(data, "calib.ids.u32"), "samples": SAMPLES,
                            "seq_len": SEQ}}
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    r = subprocess.run([worker, "run", "quantize", "--input", model_dir, "--output", out,
                        "--spec", json.dumps(spec)], capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"exaq-worker run quantize failed:\n{r.stderr[-2000:]}")
    return os.path.join(out, "model"), dt


def run_llmcompressor(model_dir, data, out, actorder):
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    ids = read_ids(os.path.join(data, "calib.ids.u32"), SAMPLES * SEQ).reshape(SAMPLES, SEQ)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * SEQ] * SAMPLES})
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"],
                          dampening_frac=0.01, actorder=None if actorder == "none" else actorder)
    t0 = time.monotonic()
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=SEQ,
            num_calibration_samples=SAMPLES, shuffle_calibration_samples=False)
    dt = time.monotonic() - t0
    shutil.rmtree(out, ignore_errors=True)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(out)
    return out, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exaq-worker", default=os.path.join(ROOT, "build/release/bin/exaq-worker"))
    ap.add_argument("--model", default=os.path.join(ROOT, "tests/data/tiny-exaone4"))
    ap.add_argument("--data", default=os.path.join(ROOT, "tests/data/tiny-a"))
    ap.add_argument("--out", default="/tmp/exaq-compare-gptq")
    ap.add_argument("--actorder", choices=["none", "static", "both"], default="both")
    ap.add_argument("--skip-exaq", action="store_true")
    a = ap.parse_args()
    orders = ["none", "static"] if a.actorder == "both" else [a.actorder]
    os.makedirs(a.out, exist_ok=True)
    base = exaq_ppl(a.exaq_worker, a.model, a.data)
    rows = [("base model (BF16)", "-", base, None)]
    for order in orders:
        if not a.skip_exaq:
            d, dt = run_exaq(a.exaq_worker, a.model, a.data, os.path.join(a.out, f"exaq-{order}"),
                             order)
            rows.append(("exaq GPTQ", order, exaq_ppl(a.exaq_worker, d, a.data), dt))
        d, dt = run_llmcompressor(a.model, a.data, os.path.join(a.out, f"llmc-{order}"), order)
        rows.append(("llm-compressor GPTQ", order, exaq_ppl(a.exaq_worker, d, a.data), dt))
    print(f"{'what':<22} {'actorder':<9} {'ppl':>8} {'damage':>8} {'time s':>7}")
    for what, order, ppl, dt in rows:
        print(f"{what:<22} {order:<9} {ppl:8.3f} {ppl - base:8.3f} "
              f"{'' if dt is None else f'{dt:7.1f}'}")


if __name__ == "__main__":
    main()
