"""The VAE's Bernoulli output layer, elementwise: torch's softplus and sigmoid vs both from one exp(−|f|), eager.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/output_layer_kernels.py --rounds 41

On f [256, 784] (iwae's output layer at N = 32, K = 8, R = 1) and binary x: "now" is log p = Σ x f − softplus(f) and
δ = x − σ(f) as gradbench computes them; "shared" is e = exp(−|f|), softplus(f) = max(f, 0) + log1p(e),
σ(f) = (1 if f ≥ 0 else e) / (1 + e); "compiled" is "now" through torch.compile (one fused CPU kernel; needs a C++
compiler). Prints the largest differences and CPU-time medians of interleaved rounds (time.process_time), and
shared ÷ now and compiled ÷ now with the intervals for their medians.
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from gradbench.speed import median_ci, time_interleaved

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rounds", type=int, default=41)
args = parser.parse_args()
torch.set_num_threads(1)
for dtype in (torch.float64, torch.float32):
    g = torch.Generator().manual_seed(0)
    f = 3 * torch.randn(256, 784, dtype=dtype, generator=g)
    x = (torch.rand(256, 784, dtype=dtype, generator=g) < 0.5).to(dtype)

    def now(f=f, x=x):
        return (x * f - F.softplus(f)).sum(-1), x - torch.sigmoid(f)

    def shared(f=f, x=x):
        e = torch.exp(-f.abs())
        return (x * f - f.clamp_min(0) - torch.log1p(e)).sum(-1), x - torch.where(f >= 0, 1, e) / (1 + e)

    compiled = torch.compile(now, dynamic=False)
    (lp0, d0), (lp1, d1), (lp2, d2) = now(), shared(), compiled()
    t = time_interleaved({"softplus": lambda f=f: F.softplus(f), "sigmoid": lambda f=f: torch.sigmoid(f), "now": now,
                          "shared": shared, "compiled": compiled}, device="cpu", warmup=3, repeats=args.rounds,
                         clock=time.process_time)
    print(f"{dtype}: max |Δ log p| {float((lp0 - lp1).abs().max()):.2g} (shared), {float((lp0 - lp2).abs().max()):.2g} "
          f"(compiled); max |Δ δ| {float((d0 - d1).abs().max()):.2g}, {float((d0 - d2).abs().max()):.2g}; "
          + ", ".join(f"{k} {np.median(v) * 1e6:.0f} µs" for k, v in t.items()))
    for name in ("shared", "compiled"):
        r = t[name] / t["now"]
        lo, hi, level = median_ci(r)
        print(f"  {name} ÷ now {np.median(r):.3f} ({lo:.3f}–{hi:.3f}, coverage {level:.1%})")
