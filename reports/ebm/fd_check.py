"""Exact EBM gradients vs central finite differences of the enumerated log p(x) (float64, step 1e-5).

    python reports/ebm/fd_check.py

Prints ‖g_FD − g_exact‖ / ‖g_exact‖ per target (tests/models/test_ebm.py asserts < 1e-7) and, for
tiny RBMs, |log Z (sum over h) − log Z (brute force over all (v, h))|.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import torch

from gradbench import registry


def build(model: str, seed: int, **params: Any) -> Any:
    """An energy-based target through the registry (as a suite builds it), float64 on the CPU."""
    entry = registry.MODELS[model]
    return entry.build(entry.params(**params), entry.proposal(), seed, torch.float64, "cpu", None)


def brute_force_log_z(W: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """log Σ_{v, h} exp(vᵀWh + bᵀv + cᵀh) over all 2^{n_v + n_h} joint states (tiny RBMs only): an independent check
    of the hidden-unit sum behind the target's log Z."""
    n_v, n_h = W.shape
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_v + n_h)), dtype=W.dtype)
    v, h = states[:, :n_v], states[:, n_v:]
    return torch.logsumexp(((v @ W) * h).sum(1) + v @ b + h @ c, 0)


def central_differences(target, step: float = 1e-5) -> torch.Tensor:
    theta = target.flat_theta()
    eye = torch.eye(theta.numel(), dtype=theta.dtype) * step
    return torch.stack([(target.with_theta(theta + e).log_likelihood() - target.with_theta(theta - e).log_likelihood()) / (2 * step)
                        for e in eye])


TARGETS = {  # label → (model, seed, params)
    "rbm 5x3 β=1": ("rbm", 0, {"n_visible": 5, "n_hidden": 3, "n_data": 7}),
    "rbm 4x6 β=2": ("rbm", 3, {"n_visible": 4, "n_hidden": 6, "n_data": 7, "weight_scale": 2.0}),
    "rbm 64x3 digits β=0.5": ("rbm", 0, {"n_visible": 64, "n_hidden": 3, "n_data": 20, "weight_scale": 0.5, "data": "digits"}),
    "ising n=6 β=1": ("ising", 0, {"n_spins": 6, "n_data": 7}),
    "ising n=5 β=2": ("ising", 4, {"n_spins": 5, "n_data": 7, "weight_scale": 2.0}),
}

if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    for name, (model, seed, params) in TARGETS.items():
        t = build(model, seed, **params)
        g = t.exact_grad()
        print(f"{name:24s} P={g.numel():4d}  rel. FD error {float((central_differences(t) - g).norm() / g.norm()):.2e}")
    for n_v, n_h, beta in [(3, 2, 1.0), (5, 4, 2.0), (6, 3, 3.0)]:
        t = build("rbm", n_v, n_visible=n_v, n_hidden=n_h, weight_scale=beta)
        print(f"rbm {n_v}x{n_h} β={beta:g}: |log Z − brute force| = {abs(float(t.log_z() - brute_force_log_z(t.W, t.b, t.c))):.1e}")
