"""Cost of one coupled i-SIR step vs one i-SIR step at the same K on the speed-vae targets (issue 18, item 4).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/coupled_step.py [R] [K]

Interleaved, one thread, median of 15 rounds: (a) ``isir_step`` (K − 1 fresh particles + index draw);
(b) ``coupled_isir_step`` + ``states_equal`` (shared K − 1 fresh particles, coupled index draw, meeting check);
(c) (b) + the per-step gradient term the driver adds while the chains have not met (h(X_t) − h(Y_{t−1}) on the
K + 1 distinct particles, one weighted_grad_log_joint call: [R, P]); (d) the same gradient term alone; (e) what the
driver now runs per step (issue 18, wave 4): the step through the packed target (all R × N chains unmet, so no
padding) with the forward pass over [X slot 0, Y slot 0, fresh] kept, + ``states_equal`` + the gradient term as one
backward pass through that forward (``step_grad``).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from gradbench.estimators.coupled import (
    _gather_cells,
    _pack,
    _PackedTarget,
    coupled_isir_step,
    h_weights,
    init_state,
    isir_step,
    selected,
    states_equal,
)
from gradbench.seeding import make_generator
from gradbench.speed import plans, time_interleaved
from gradbench.suite import load_suite

torch.set_num_threads(1)
R = int(sys.argv[1]) if len(sys.argv) > 1 else 200
K = int(sys.argv[2]) if len(sys.argv) > 2 else 16
suite, cells = load_suite("suites/speed-vae.yaml")


def measure(p) -> None:  # one target: the closures below are used before the next target is built
    t = p.target.build(suite.dtype, suite.device)
    g = make_generator(0)
    X, Y = init_state(t, R, K, g), init_state(t, R, K, g)

    def step() -> None:
        isir_step(t, X, g)

    def coupled() -> None:
        x, y = coupled_isir_step(t, X, Y, g)
        states_equal(x, y)

    def grad_term(x=X, y=Y) -> None:
        hx, hy = h_weights(x, True), h_weights(y, True)
        z = torch.cat([x.z[:, :1], y.z[:, :1], x.z[:, 1:]], 1)
        w = torch.cat([hx[:, :1], -hy[:, :1], hx[:, 1:] - hy[:, 1:]], 1)
        t.weighted_grad_log_joint(z, w)

    def coupled_with_grad() -> None:
        x, y = coupled_isir_step(t, X, Y, g)
        states_equal(x, y)
        grad_term(x, y)

    packing = _pack(np.ones((R, t.n_data), dtype=bool), 2 * R, X.z.device)

    def fused() -> None:
        packed = _PackedTarget(t, packing, R, t.n_data, torch.stack([selected(X)[0], selected(Y)[0]], 1))
        x, y = coupled_isir_step(packed, X, Y, g)
        states_equal(x, y)
        hx, hy = h_weights(x, True), h_weights(y, True)
        w = torch.cat([hx[:, :1], -hy[:, :1], hx[:, 1:] - hy[:, 1:]], 1)
        packed.step_grad(_gather_cells(w, packing))

    s = time_interleaved({"isir": step, "coupled": coupled, "coupled+grad": coupled_with_grad, "grad": grad_term,
                          "fused": fused}, device="cpu", warmup=2, repeats=int(sys.argv[3]) if len(sys.argv) > 3 else 15)
    med = {k: float(np.median(v)) for k, v in s.items()}
    print(f"{p.target.model}({p.target.params.get('latent_dim', p.target.params.get('layers'))}) R={R} K={K}: "
          + ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in med.items())
          + f"; coupled ÷ isir step {med['coupled'] / med['isir']:.2f}, (coupled + grad) ÷ isir step "
          f"{med['coupled+grad'] / med['isir']:.2f}, fused (coupled + grad, one forward) ÷ isir step "
          f"{med['fused'] / med['isir']:.2f}", flush=True)


for p in plans(suite, cells):
    measure(p)
