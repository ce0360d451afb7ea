"""Estimated references: the mean of many i.i.d. replicates of an unbiased estimator, with its covariance.

Where no closed form, enumeration or quadrature exists (∇ IWAE_K for K ≥ 2; latent spaces too large to
integrate), the reference is a high-budget Monte Carlo run. It is ``kind="estimated"`` and carries what a
bias test needs to treat the comparison as a two-sample problem: the per-coordinate standard error
``stderr``, and — up to ``MAX_COV_DIM`` coordinates — the replicates' sample covariance ``cov`` and their
number ``n`` (the sufficient statistics; ``gradbench.protocols.bias`` uses them). Above the cap only the
diagonal is known: the bias test then takes its max-t branch (``ReferenceNoise.estimated_diagonal``,
docs/design.md §8.2). The runner computes each reference once per (target, dtype, objective) and caches it
in the run folder (``gradbench.run.store``).

Replicates are drawn in blocks and merged with the pairwise update of Chan, Golub & LeVeque (1983), so the
covariance is accurate even when the mean dominates and memory stays at one block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gradbench.contracts import Objective
from gradbench.core import Reference
from gradbench.seeding import derive_seed, make_generator

MAX_COV_DIM = 2048  # keep the reference's full covariance (float64 [P, P]) up to this P
MAX_PARTICLES = 1 << 18  # particles × data points per block of a reference run


def streaming_reference(draw: Callable[[int], Tensor], total: int, block: int, *, dtype: torch.dtype | None = None,
                        max_cov_dim: int = MAX_COV_DIM) -> Reference:
    """Mean, s.e. and (P ≤ ``max_cov_dim``) covariance of ``total`` replicates, ``draw(R)`` → [R, P] at a time."""
    mean = m2 = None
    done = 0
    # a progress bar with an estimate of the time left, on an interactive stderr only (tqdm's disable=None)
    bar = tqdm(total=total, unit="replicate", desc="estimated reference", leave=False, disable=None)
    while done < total:
        R = min(block, total - done)
        g = draw(R).detach().double()
        bm = g.mean(0)
        gc = g - bm
        full = g.shape[1] <= max_cov_dim
        bm2 = gc.T @ gc if full else (gc**2).sum(0)
        if mean is None:
            mean, m2 = bm, bm2
        else:
            delta = bm - mean
            m2 = m2 + bm2 + (torch.outer(delta, delta) if full else delta**2) * (done * R / (done + R))
            mean = mean + delta * (R / (done + R))
        done += R
        bar.update(R)
    bar.close()
    assert mean is not None and m2 is not None
    cov = m2 / (total - 1)
    var = torch.diagonal(cov) if cov.ndim == 2 else cov
    out = dtype or mean.dtype
    return Reference(mean.to(out), kind="estimated", stderr=(var / total).sqrt().to(out),
                     cov=cov if cov.ndim == 2 else None, n=total)


def from_replicates(G: Tensor, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Reference:
    """The estimated reference of replicates already in memory, G [n, P]."""
    ref = streaming_reference(lambda R: G, G.shape[0], G.shape[0], dtype=dtype)
    if device is None:
        return ref
    return Reference(ref.value.to(device), kind=ref.kind, stderr=ref.stderr.to(device),  # type: ignore[union-attr]
                     cov=None if ref.cov is None else ref.cov.to(device), n=ref.n)


def iwae_bound_reference(target: object, objective: Objective, replicates: int, seed: int) -> Reference:
    """∇φ IWAE_K by DReG (Tucker et al. 2019) or ∇θ IWAE_K by the self-normalised IWAE gradient — both
    unbiased for their bound — averaged over ``replicates`` replicates from a seed derived from ``seed``.
    For targets whose family is reparameterisable (``reparam``)."""
    from gradbench.estimators.pathwise import dreg, iwae_reparam

    K = objective.K
    layout_dtype = target.x.dtype  # type: ignore[attr-defined]
    gen = make_generator(derive_seed(seed, "iwae-reference", objective.wrt, K), target.x.device)  # type: ignore[attr-defined]
    block = max(1, MAX_PARTICLES // (K * target.n_data))  # type: ignore[attr-defined]

    def draw(R: int) -> Tensor:
        if objective.wrt == "phi":
            return dreg(target, R, gen, K=K).grads  # type: ignore[arg-type]
        return iwae_reparam(target, R, gen, K=K, wrt="theta").grads  # type: ignore[arg-type]

    return streaming_reference(draw, replicates, block, dtype=layout_dtype)
