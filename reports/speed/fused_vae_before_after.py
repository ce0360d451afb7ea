"""The VAE's fused gradient before/after tanh = 2σ(2u) − 1 on the CPU and the ∇Wᵀ bmm for narrow layers, and
Pyro RenyiELBO(α=0) per replicate, interleaved in one process on the one-point target of suites/speed-vae.yaml.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/fused_vae_before_after.py LATENT_DIM DTYPE [REPEATS]

"before" = the same code with both switches of gradbench.models.vae off (torch.tanh; one bmm for every layer).
Prints µs per replicate (R = 200, K = 16, N = 1) and Pyro ÷ each; checks before == after on shared noise first.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from gradbench import registry
from gradbench.models import vae
from gradbench.peers import pyro_vae
from gradbench.seeding import make_generator
from gradbench.speed import plans, time_interleaved
from gradbench.suite import load_suite


def main(latent_dim: int, dtype: str, repeats: int) -> None:
    torch.set_num_threads(1)
    spec, cells = load_suite("suites/speed-vae.yaml")
    plan = next(p for p in plans(spec, cells) if p.target.model == "vae" and p.target.params["latent_dim"] == latent_dim)
    one = pyro_vae.one_point_target(plan.target.build(dtype, "cpu"), 0)
    peer, iwae, R, K = pyro_vae.PyroVAE(one, plan.K), registry.ESTIMATORS["iwae"].fn, plan.R, plan.K

    def switches(on: bool) -> None:
        vae._CPU_TANH_VIA_SIGMOID, vae._NARROW_FAN_IN = on, (8 if on else 0)

    def run(on: bool, gen: torch.Generator) -> torch.Tensor:
        switches(on)
        return iwae(one, R, gen, K=K).grads

    with torch.enable_grad():
        a, b = run(False, make_generator(5, "cpu")), run(True, make_generator(5, "cpu"))
        diff = float((a - b).abs().max() / a.abs().max())
        g = make_generator(1, "cpu")

        def pyro_block() -> None:
            for _ in range(10):
                peer.grad()

        t = time_interleaved({"before": lambda: run(False, g), "after": lambda: run(True, g), "pyro": pyro_block},
                             device="cpu", warmup=2, repeats=repeats)
    switches(True)
    before, after, pyro = (float(np.median(t[k])) for k in ("before", "after", "pyro"))
    per = {"before": before / R, "after": after / R, "pyro": pyro / 10}
    print(f"vae latent {latent_dim}, {dtype}: before {per['before'] * 1e6:.1f} µs, after {per['after'] * 1e6:.1f} µs "
          f"per replicate (after ÷ before {after / before:.3f}); Pyro {per['pyro'] * 1e3:.3g} ms; Pyro ÷ iwae before "
          f"{per['pyro'] / per['before']:.1f}, after {per['pyro'] / per['after']:.1f}; before vs after max rel diff {diff:.1g}")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 15)
