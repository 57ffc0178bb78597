#!/usr/bin/env python3
"""Cross-check exaq's checkpoints with the real loader (transformers + compressed-tensors).

usage: check_transformers.py [--device cpu|cuda] IDS_FILE N MODEL_DIR:EXAQ_LOGITS[:EXAQ_WO] ...

For every model dir, load it with transformers in float32 (exaq computes in fp32 from the
exactly dequantized weights, so fp32 isolates format and loading from bf16 rounding), run the
first N ids of IDS_FILE through it and compare the logits with exaq's own for the same model:

    exaq-worker logits --input DIR --ids IDS_FILE --n N --out EXAQ_LOGITS
    exaq-worker logits --input DIR --ids IDS_FILE --n N --out EXAQ_WO --weights-only

The tolerance is the engine's golden one: max |diff| <= 2% of max |logit| and the same argmax
at >= 99% of positions.

Models whose activations are quantized (W8A8, FP8) get three more lines, because the fake
quantization of activations is discontinuous: a rounding flip upstream moves a value by a whole
quantization step, so two correct fp32 implementations that only sum in a different order can
end up further apart than the tolerance. The script measures that noise floor, the larger of:
this same loader against itself with the input embeddings perturbed by 1e-6 relative (about as
far as the two implementations are apart without activation quantization; the worst of three
draws), and, when it runs on a GPU, this same loader on the CPU against itself on the GPU (the
same code summing in another order at every op). It checks the format where it is
deterministic:
  - weights: with activation quantization off on both sides (EXAQ_WO), the logits must agree
    within the tolerance, which tests every quantized weight, scale and zero point;
  - activations: each quantized linear's output in the loader is compared, on the loader's own
    input, with the activation quantization exaq simulates (vLLM's kernels: int8 per token
    absmax/127 over [-127, 127]; FP8 per token absmax/448 with the scale floored at
    1/(448*512); static FP8 with input_scale) and with compressed-tensors' own convention
    (int8 absmax/127.5 over [-128, 127]).
A model passes when its full logits are within the tolerance, or, for activation-quantized
models, when the weights line passes and the full-logit difference is no larger than twice the
noise floor. Not part of `make test` (it needs PyTorch); docs/quantization.md records the
command and the result (docs/models.md for the families of tests/tools/loader_check_families.sh;
the llama, qwen2, qwen3, mistral and minicpm checkpoints load through their transformers classes,
minicpm through minicpm_ref.py).
"""
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

# model_type minicpm (not in transformers): the reference of tests/tools/minicpm_ref.py.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minicpm_ref  # noqa: E402,F401

TOL_REL, TOL_ARGMAX = 0.02, 0.99
# Relative perturbation of the input embeddings for the noise floor: about how far the two
# implementations' logits are apart without activation quantization.
PERTURB = 1e-6


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


def agree(a, b):
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def quant_linears(model):
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and getattr(mod, "quantization_scheme", None):
            yield name, mod


def act_args(mod):
    return getattr(mod.quantization_scheme, "input_activations", None)


def fq_int8_vllm(x):
    s = x.abs().amax(-1, keepdim=True).clamp(min=1e-5) / 127.0
    return torch.round(x / s).clamp(-127, 127) * s


def fq_int8_ct(x):
    s = x.abs().amax(-1, keepdim=True) / 127.5
    s = torch.where(s == 0, torch.finfo(x.dtype).eps, s)
    return torch.round(x / s).clamp(-128, 127) * s


def fq_fp8(x, s):
    return (x / s).clamp(-448, 448).to(torch.float8_e4m3fn).to(x.dtype) * s


def fq_fp8_token(x):
    return fq_fp8(x, (x.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448 * 512)))


def per_linear(model, ids):
    """Max relative difference, over the quantized linears, between the loader's output and
    W . fq(x) for each convention, on the loader's own input x."""
    worst = {"exaq": 0.0, "compressed-tensors": 0.0}
    hooks = []

    def hook(mod, inp, out):
        x, a = inp[0].float(), act_args(mod)
        w = mod.weight.float()
        if a.type == "float":
            s = getattr(mod, "input_scale", None)
            mine = fq_fp8(x, s.float()) if not a.dynamic and s is not None else fq_fp8_token(x)
            cands = {"exaq": mine, "compressed-tensors": mine}
        else:
            cands = {"exaq": fq_int8_vllm(x), "compressed-tensors": fq_int8_ct(x)}
        scale = out.abs().max().item() or 1.0
        for k, xq in cands.items():
            y = torch.nn.functional.linear(xq, w, None if mod.bias is None else mod.bias.float())
            worst[k] = max(worst[k], (y - out.float()).abs().max().item() / scale)

    for _, mod in quant_linears(model):
        if act_args(mod) is not None:
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return worst


def check(model_dir, ours, ours_wo, ids, device):
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except Exception as e:  # report and go on with the next model
        msg = str(e).strip().splitlines()
        print(f"{model_dir}: does NOT load: {type(e).__name__}: {msg[0] if msg else ''}")
        return False
    model.to(device).eval()
    with torch.no_grad():
        ref = model(ids).logits[0].float().cpu().numpy()
    mine = np.fromfile(ours, dtype="<f4").reshape(ref.shape)
    r, a = rel(ref, mine), agree(ref, mine)
    qc = getattr(model.config, "quantization_config", None)
    fmt = "dense" if qc is None else "compressed-tensors"
    within = r <= TOL_REL and a >= TOL_ARGMAX
    print(f"{model_dir}: loads ({fmt}); logits: max|diff|/max|logit| = {r:.4%}, "
          f"argmax agreement {a:.2%}")
    actq = [m for _, m in quant_linears(model) if act_args(m) is not None]
    if not actq:
        print(f"  {'ok' if within else 'FAIL'}")
        return within
    floor, floor_a = 0.0, 1.0
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids)
        base = model(inputs_embeds=emb).logits[0].float().cpu().numpy()
        for seed in range(1, 4):
            g = torch.Generator(device="cpu").manual_seed(seed)
            noise = torch.randn(emb.shape, generator=g).to(device)
            pert = model(inputs_embeds=emb * (1 + PERTURB * noise)).logits[0].float().cpu().numpy()
            floor, floor_a = max(floor, rel(base, pert)), min(floor_a, agree(base, pert))
    print(f"  noise floor (the loader against itself, inputs perturbed by {PERTURB:g}, worst of "
          f"3): {floor:.4%}, argmax agreement {floor_a:.2%}")
    if device != "cpu":
        # The same loader on the CPU: the same code summing in another order at every op (a
        # second copy loaded there, since a dispatched model may keep moving inputs to the GPU).
        cpu_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                         device_map="cpu").eval()
        with torch.no_grad():
            on_cpu = cpu_model(ids.cpu()).logits[0].float().cpu().numpy()
        del cpu_model
        xr, xa = rel(ref, on_cpu), agree(ref, on_cpu)
        floor, floor_a = max(floor, xr), min(floor_a, xa)
        print(f"  noise floor (the loader on the CPU against itself on the GPU): {xr:.4%}, "
              f"argmax agreement {xa:.2%}")
    pl = per_linear(model, ids)
    print(f"  activations, per linear on the loader's inputs: max rel diff to exaq's "
          f"quantization {pl['exaq']:.2e}, to compressed-tensors' {pl['compressed-tensors']:.2e}")
    good_w = False
    if ours_wo:
        saved = [(m, m.quantization_scheme.input_activations) for m in actq]
        for m, _ in saved:
            m.quantization_scheme.input_activations = None
        with torch.no_grad():
            ref_wo = model(ids).logits[0].float().cpu().numpy()
        for m, s in saved:
            m.quantization_scheme.input_activations = s
        mine_wo = np.fromfile(ours_wo, dtype="<f4").reshape(ref.shape)
        rw, aw = rel(ref_wo, mine_wo), agree(ref_wo, mine_wo)
        good_w = rw <= TOL_REL and aw >= TOL_ARGMAX
        print(f"  weights (activation quantization off on both sides): max|diff|/max|logit| = "
              f"{rw:.4%}, argmax agreement {aw:.2%}")
    good = within or (good_w and r <= 2 * floor)
    print(f"  {'ok' if good else 'FAIL'}")
    return good


def main():
    args = sys.argv[1:]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args and args[0] == "--device":
        device, args = args[1], args[2:]
    if len(args) < 3:
        sys.exit(__doc__)
    ids_file, n = args[0], int(args[1])
    ids = torch.tensor(np.fromfile(ids_file, dtype="<u4")[:n].astype(np.int64))[None].to(device)
    try:
        import compressed_tensors

        ct = compressed_tensors.__version__
    except ImportError:
        ct = "not installed"
    dev = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"compressed-tensors {ct}, device {dev}")
    ok = True
    for arg in args[2:]:
        parts = arg.split(":")
        try:
            ok &= check(parts[0], parts[1], parts[2] if len(parts) > 2 else None, ids, device)
        except Exception as e:  # a loader failure after loading (in the forward pass)
            msg = str(e).strip().splitlines()
            print(f"{parts[0]}: FAIL: {type(e).__name__}: {msg[0] if msg else ''}")
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
