#!/usr/bin/env python3
"""Goldens for worker/train/optim.c: torch.optim.AdamW, clip_grad_norm_ and the warmup+cosine
schedule (LambdaLR) on a small fixed least-squares problem, with gradient accumulation.

Problem: W (3x4) and b (4), loss of one micro-batch = 0.5 * mean_r ||x_r W + b - y_r||^2 over
its rows; each step accumulates ACCUM micro-batches (each loss divided by ACCUM), clips the
global norm to MAX_NORM, steps AdamW (b without weight decay) and then the schedule.

Writes tests/data/train/optim_goldens.txt: lines "name count v1 v2 ...", read by
tests/unit/train/test_optim.c. Run from the repository root: python3 tests/tools/make_optim_goldens.py
"""
import math

import torch

STEPS, ACCUM, ROWS, DIN, DOUT = 6, 2, 5, 3, 4
LR, LR_MIN_RATIO, WARMUP, BETAS, EPS, WD, MAX_NORM = 0.05, 0.1, 2, (0.9, 0.95), 1e-8, 0.1, 0.5


def lr_factor(step):
    """The schedule of optim.c for 0-based step `step`."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    prog = (step - WARMUP) / max(1, STEPS - WARMUP)
    return LR_MIN_RATIO + 0.5 * (1 - LR_MIN_RATIO) * (1 + math.cos(math.pi * prog))


def main():
    g = torch.Generator().manual_seed(1234)
    W = torch.randn(DIN, DOUT, generator=g, dtype=torch.float64)
    b = torch.randn(DOUT, generator=g, dtype=torch.float64) * 0.1
    x = torch.randn(STEPS, ACCUM, ROWS, DIN, generator=g, dtype=torch.float64)
    y = torch.randn(STEPS, ACCUM, ROWS, DOUT, generator=g, dtype=torch.float64)
    out = [("W0", W.flatten()), ("b0", b.clone()), ("x", x.flatten()), ("y", y.flatten())]
    pw = torch.nn.Parameter(W.clone())
    pb = torch.nn.Parameter(b.clone())
    opt = torch.optim.AdamW([{"params": [pw], "weight_decay": WD},
                             {"params": [pb], "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    norms, lrs, losses = [], [], []
    for s in range(STEPS):
        opt.zero_grad()
        tot = 0.0
        for a in range(ACCUM):
            r = x[s, a] @ pw + pb - y[s, a]
            loss = 0.5 * (r * r).sum(dim=1).mean() / ACCUM
            loss.backward()
            tot += loss.item()
        norms.append(torch.nn.utils.clip_grad_norm_([pw, pb], MAX_NORM).item())
        lrs.append(opt.param_groups[0]["lr"])
        losses.append(tot)
        opt.step()
        sched.step()
        out.append((f"W{s + 1}", pw.detach().flatten().clone()))
        out.append((f"b{s + 1}", pb.detach().clone()))
    out += [("norm", torch.tensor(norms, dtype=torch.float64)),
            ("lr", torch.tensor(lrs, dtype=torch.float64)),
            ("loss", torch.tensor(losses, dtype=torch.float64))]
    hdr = (f"steps {STEPS} accum {ACCUM} rows {ROWS} din {DIN} dout {DOUT} lr {LR} "
           f"lr_min_ratio {LR_MIN_RATIO} warmup {WARMUP} beta1 {BETAS[0]} beta2 {BETAS[1]} "
           f"eps {EPS} wd {WD} max_norm {MAX_NORM}")
    with open("tests/data/train/optim_goldens.txt", "w") as f:
        f.write(f"# torch {torch.__version__}; tests/tools/make_optim_goldens.py\n")
        f.write(f"params {hdr}\n")
        for name, t in out:
            vals = " ".join(repr(float(v)) for v in t.tolist())
            f.write(f"{name} {t.numel()} {vals}\n")


if __name__ == "__main__":
    main()
