"""The two kernels behind the VAE's fused-gradient changes, timed interleaved in one process (one thread):

* tanh(u) vs 2σ(2u) − 1 (in place) on [3200, 200] — the first hidden layer of R = 200, K = 16 particles;
* per-replicate ∇W = Σ_k δ_k h_kᵀ [B, fan_out, fan_in] by one bmm ("direct") vs ∇Wᵀ by bmm then a copy into the
  same strided [B, P] block ("T+copy"), B = 200, K = 16, fan_out 200 (64 for the output layer).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/fused_vae_kernels.py [REPEATS]

Prints medians in ms.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from gradbench.speed import time_interleaved


def _tanh_calls(u: torch.Tensor, out: torch.Tensor) -> dict[str, Callable[[], object]]:
    return {"tanh": lambda: torch.tanh(u, out=out),
            "2σ(2u)−1": lambda: torch.sigmoid_(torch.mul(u, 2, out=out)).mul_(2).sub_(1),
            "sigmoid": lambda: torch.sigmoid(u, out=out)}


def _bmm_calls(d: torch.Tensor, h: torch.Tensor, block: torch.Tensor) -> dict[str, Callable[[], object]]:
    return {"direct": lambda: torch.bmm(d.transpose(1, 2), h, out=block),
            "T+copy": lambda: block.copy_(torch.bmm(h.transpose(1, 2), d).transpose(1, 2))}


def main(repeats: int) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        u = torch.randn(3200, 200, generator=gen, dtype=dtype)
        t = time_interleaved(_tanh_calls(u, torch.empty_like(u)), device="cpu", warmup=3, repeats=repeats)
        print(f"{dtype}: " + ", ".join(f"{k} {np.median(v) * 1e3:.2f}" for k, v in t.items()))
        B, K = 200, 16
        for fan_out, fan_in in ((200, 2), (200, 8), (200, 20), (64, 200)):
            d = torch.randn(B, K, fan_out, generator=gen, dtype=dtype)
            h = torch.randn(B, K, fan_in, generator=gen, dtype=dtype)
            block = torch.empty(B, fan_out * fan_in + 17_000, dtype=dtype)[:, :fan_out * fan_in].view(B, fan_out, fan_in)
            t = time_interleaved(_bmm_calls(d, h, block), device="cpu", warmup=3, repeats=repeats)
            direct, tcopy = (float(np.median(t[k])) for k in ("direct", "T+copy"))
            print(f"  fan_out {fan_out}, fan_in {fan_in}: direct {direct * 1e3:.2f}, T+copy {tcopy * 1e3:.2f} "
                  f"(direct ÷ T+copy {direct / tcopy:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("REPEATS", type=int, nargs="?", default=40, help="timed rounds")
    main(parser.parse_args().REPEATS)
