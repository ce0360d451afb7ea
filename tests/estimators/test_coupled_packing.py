"""Per-(replicate, point) compaction of the coupled driver: the packed path equals the unpacked one.

Tier 1 (exact up to rounding, fixed seed 0): on a VAE and an SBN (targets with ``log_joint_at``), ``run_coupled``
with ``pack_points`` gives the same meeting times (exactly) and the same H_{k:m} (to 1e-12 relative, float64) as
the reference path that keeps every point of a live replicate, for coupled i-SIR and PIMH, k = m = 0 (the seed's
form: compaction from the first coupled step) and k < m with a lag; it evaluates fewer log-joints, never fewer than
the estimator is charged. ``_pack`` places every unmet pair in exactly one valid cell. Negative control: a packing
that loses one unmet chain per step is rejected by the same comparison.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gradbench import registry
from gradbench.estimators import coupled as C
from gradbench.estimators import coupling as L
from gradbench.seeding import make_generator


def _vae():
    entry = registry.MODELS["vae"]
    return entry.build(entry.params(latent_dim=2, data_dim=6, n_data=3, hidden=[8]), entry.proposal(mean_shift=0.5), 3,
                       torch.float64, "cpu", None)


def _sbn():
    entry = registry.MODELS["sbn"]
    return entry.build(entry.params(layers=[3], conditionals="mlp", hidden=4, data_dim=5, n_data=3),
                       entry.proposal(), 3, torch.float64, "cpu", None)


TARGETS = {"vae": _vae, "sbn": _sbn}
CONFIGS = [{"k": 0, "m": 0, "lag": 1, "rao_blackwell": True}, {"k": 2, "m": 6, "lag": 2, "rao_blackwell": True},
           {"k": 1, "m": 3, "lag": 1, "rao_blackwell": False}]


def _run(t, kind: str, pack: bool, **kw) -> C.CoupledRun:
    return C.run_coupled(t, 60, make_generator(0), C._kind(kind), K=4, max_iter=10_000, pack_points=pack, **kw)


def _agree(a: C.CoupledRun, b: C.CoupledRun) -> bool:
    scale = float(a.grads.abs().max())
    return torch.equal(a.tau_point, b.tau_point) and float((a.grads - b.grads).abs().max()) <= 1e-12 * scale


@pytest.fixture(scope="module")
def targets():
    return {name: build() for name, build in TARGETS.items()}


@pytest.mark.parametrize("kind", ["isir", "pimh"])
@pytest.mark.parametrize("name", TARGETS)
def test_packed_driver_equals_the_unpacked_one(targets, name, kind):
    t = targets[name]
    for kw in CONFIGS:
        ref, packed = _run(t, kind, False, **kw), _run(t, kind, True, **kw)
        assert _agree(ref, packed), kw
        c = C._kind(kind).evals_per_step(4)
        charged = float((2 * 4 + c * torch.clamp(ref.tau_point, min=float(kw["m"]))).sum())
        assert charged - 1e-9 <= packed.lockstep_evals <= ref.lockstep_evals, kw
        if kw["m"] == 0:  # compaction from the first coupled step: the met points are no longer evaluated
            assert packed.lockstep_evals < ref.lockstep_evals


def test_negative_control_a_lost_chain_is_detected(targets, monkeypatch):
    """A packing that drops the last unmet pair of every step (as if it had met) changes H or τ."""
    t = targets["vae"]
    ref = _run(t, "isir", False, k=0, m=0, lag=1, rao_blackwell=True)
    pack = C._pack

    def lossy(unmet: np.ndarray, max_rows: int, device: torch.device) -> C._Packing:
        unmet = unmet.copy()
        if unmet.sum() > 1:
            b, n = np.argwhere(unmet)[-1]
            unmet[b, n] = False
            unmet[b] |= ~unmet.any(1)[b] & (np.arange(unmet.shape[1]) == (n + 1) % unmet.shape[1])
        return pack(unmet, max_rows, device)

    monkeypatch.setattr(C, "_pack", lossy)
    assert not _agree(ref, _run(t, "isir", True, k=0, m=0, lag=1, rao_blackwell=True))


def test_pack_places_every_unmet_pair_once():
    rng = np.random.default_rng(0)
    for B, N, p, max_rows in [(7, 5, 0.3, 7), (20, 10, 0.1, 40), (3, 4, 0.9, 3), (1, 1, 1.0, 1)]:
        unmet = rng.random((B, N)) < p
        unmet[~unmet.any(1), 0] = True  # every live replicate has an unmet point
        pk = C._pack(unmet, max_rows, torch.device("cpu"))
        flat, valid = pk.flat.numpy(), pk.valid.numpy()
        assert sorted(flat[valid]) == sorted(b * N + n for b, n in np.argwhere(unmet))  # each once
        assert unmet.reshape(-1)[flat].all()  # padding repeats real pairs (finite evaluations)
        rows = flat.reshape(-1, pk.W)
        assert (rows // N == pk.row_of.numpy()[:, None]).all() and (pk.points.numpy() == rows % N).all()
        assert len(rows) <= max(max_rows, B)


def _bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int64), b.view(torch.int64))


def _swapped_init(kernel: L.LaggedKernel) -> L.LaggedKernel:
    """The same kernel with X_0 and Y_0 taken in the other order from the generator (a different noise order)."""
    held: list = []

    def init(R, gen):
        if held:
            return held.pop()
        x, y = kernel.init(R, gen), kernel.init(R, gen)
        held.append(x)
        return y

    return dataclasses.replace(kernel, init=init)


@pytest.mark.parametrize("kind", ["isir", "pimh"])
@pytest.mark.parametrize("name", TARGETS)
def test_reused_packing_is_bitwise_the_fresh_one(targets, name, kind):
    """A step whose unmet pairs are the previous step's reuses that packing: bit for bit the driver that packs every
    step, on the same generator; negative control: the same comparison fails for another noise order."""
    t = targets[name]
    for kw in CONFIGS:
        kernel = {reuse: C.lagged_kernel(t, C._kind(kind), 60, K=4, rao_blackwell=kw["rao_blackwell"], reuse_packing=reuse)
                  for reuse in (False, True)}
        run = {reuse: L.run_lagged(k, 60, make_generator(0), k=kw["k"], m=kw["m"], lag=kw["lag"], max_iter=10_000)
               for reuse, k in kernel.items()}
        assert _bits(run[True].grads, run[False].grads) and torch.equal(run[True].tau, run[False].tau), kw
        assert run[True].evaluated.sum() == run[False].evaluated.sum()
        other = L.run_lagged(_swapped_init(kernel[True]), 60, make_generator(0), k=kw["k"], m=kw["m"], lag=kw["lag"],
                             max_iter=10_000)
        assert not _bits(other.grads, run[False].grads), kw
