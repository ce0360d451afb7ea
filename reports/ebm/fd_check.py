"""Exact EBM gradients vs central finite differences of the enumerated log p(x) (float64, step 1e-5).

    python reports/ebm/fd_check.py

Prints ‖g_FD − g_exact‖ / ‖g_exact‖ per target (tests/models/test_ebm.py asserts < 1e-7) and, for
tiny RBMs, |log Z (sum over h) − log Z (brute force over all (v, h))|.
"""

from __future__ import annotations

import torch

from gradbench.models.ebm import RBM, Ising, IsingParams, NoProposal, RBMParams, rbm_brute_force_log_z


def central_differences(target, step: float = 1e-5) -> torch.Tensor:
    theta = target.flat_theta()
    eye = torch.eye(theta.numel(), dtype=theta.dtype) * step
    return torch.stack([(target.with_theta(theta + e).log_likelihood() - target.with_theta(theta - e).log_likelihood()) / (2 * step)
                        for e in eye])


TARGETS = {
    "rbm 5x3 β=1": RBM.build(RBMParams(n_visible=5, n_hidden=3, n_data=7), NoProposal(), 0),
    "rbm 4x6 β=2": RBM.build(RBMParams(n_visible=4, n_hidden=6, n_data=7, weight_scale=2.0), NoProposal(), 3),
    "rbm 64x3 digits β=0.5": RBM.build(RBMParams(n_visible=64, n_hidden=3, n_data=20, weight_scale=0.5, data="digits"), NoProposal(), 0),
    "ising n=6 β=1": Ising.build(IsingParams(n_spins=6, n_data=7), NoProposal(), 0),
    "ising n=5 β=2": Ising.build(IsingParams(n_spins=5, n_data=7, weight_scale=2.0), NoProposal(), 4),
}

if __name__ == "__main__":
    for name, t in TARGETS.items():
        g = t.exact_grad()
        print(f"{name:24s} P={g.numel():4d}  rel. FD error {float((central_differences(t) - g).norm() / g.norm()):.2e}")
    for n_v, n_h, beta in [(3, 2, 1.0), (5, 4, 2.0), (6, 3, 3.0)]:
        t = RBM.build(RBMParams(n_visible=n_v, n_hidden=n_h, weight_scale=beta), NoProposal(), n_v)
        print(f"rbm {n_v}x{n_h} β={beta:g}: |log Z − brute force| = {abs(float(t.log_z() - rbm_brute_force_log_z(t.W, t.b, t.c))):.1e}")
