"""Estimated references: the blockwise (Chan et al.) mean and covariance equal the one-pass numpy
statistics, and the IWAE_K reference of the PPCA encoder carries its covariance for two-sample tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradbench.contracts import Objective
from gradbench.references.estimated import from_replicates, iwae_bound_reference, streaming_reference
from tests.models.test_ppca_encoder import make_encoder_target
from tests.references.recording import record_blocks


def test_blockwise_moments_equal_one_pass_moments():
    G = torch.randn(1003, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 100.0
    blocks = iter(torch.split(G, 128))
    ref = streaming_reference(lambda R: next(blocks), G.shape[0], 128)
    np.testing.assert_allclose(ref.value.numpy(), G.numpy().mean(0), rtol=1e-13)
    np.testing.assert_allclose(ref.cov.numpy(), np.cov(G.numpy().T), rtol=1e-9)  # mean 100 ≫ sd: no cancellation
    np.testing.assert_allclose(ref.stderr.numpy(), G.numpy().std(0, ddof=1) / np.sqrt(1003), rtol=1e-9)
    assert ref.kind == "estimated" and ref.n == 1003
    one = from_replicates(G)
    np.testing.assert_allclose(one.cov.numpy(), ref.cov.numpy(), rtol=1e-9)
    # negative control: the naive merge (no between-block term) gets the covariance wrong
    means = torch.stack([b.mean(0) for b in torch.split(G, 128)])
    naive = sum(((b - b.mean(0)).T @ (b - b.mean(0))) for b in torch.split(G, 128)) / (G.shape[0] - 1)
    assert means.std(0).max() > 0 and not np.allclose(naive.numpy(), ref.cov.numpy(), rtol=1e-3)


def test_wide_gradients_keep_only_the_diagonal():
    G = torch.randn(50, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = streaming_reference(lambda R: G, 50, 50, max_cov_dim=4)
    assert ref.cov is None and ref.stderr.shape == (5,)


def test_the_diagonal_merge_over_blocks_equals_one_pass_moments():
    """Above ``max_cov_dim`` only per-coordinate moments are merged block by block (Chan et al.'s update with δ²
    for δδᵀ): mean and s.e. equal numpy's one-pass mean and sd/√n over unequal blocks (1003 = 7 × 128 + 107), and
    the s.e. equals the diagonal of the full path's covariance; ``dtype`` sets the output's dtype (the moments stay
    float64). Negative control: merging the blocks' variances without the between-block term is wrong."""
    G = torch.randn(1003, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3 + 100.0
    G[:500] += torch.linspace(0, 2, 7, dtype=torch.float64)  # block means differ: the between-block term matters
    blocks = iter(torch.split(G, 128))
    wide = streaming_reference(lambda R: next(blocks), G.shape[0], 128, max_cov_dim=6)
    assert wide.cov is None and wide.n == 1003
    assert streaming_reference(lambda R: G, 1003, 1003, max_cov_dim=7).cov.shape == (7, 7)  # P = max_cov_dim: kept
    np.testing.assert_allclose(wide.value.numpy(), G.numpy().mean(0), rtol=1e-13)
    np.testing.assert_allclose(wide.stderr.numpy(), G.numpy().std(0, ddof=1) / np.sqrt(1003), rtol=1e-9)
    full = from_replicates(G)
    np.testing.assert_allclose(wide.stderr.numpy(), (torch.diagonal(full.cov) / 1003).sqrt().numpy(), rtol=1e-9)
    blocks32 = iter(torch.split(G, 128))
    f32 = streaming_reference(lambda R: next(blocks32), G.shape[0], 128, dtype=torch.float32, max_cov_dim=6)
    assert f32.value.dtype == f32.stderr.dtype == torch.float32
    np.testing.assert_allclose(f32.stderr.numpy(), wide.stderr.numpy(), rtol=1e-6)
    within = sum(((b - b.mean(0)) ** 2).sum(0) for b in torch.split(G, 128)) / (G.shape[0] - 1)
    assert not np.allclose((within / 1003).sqrt().numpy(), wide.stderr.numpy(), rtol=1e-3)


def test_ppca_encoder_iwae_reference_is_the_references_layer():
    t = make_encoder_target(d=4, k=2, n=2, reference_replicates=400)
    ref = t.reference("phi_iwae4")
    again = iwae_bound_reference(t, Objective("phi", "iwae", 4), 400, t.seed)
    assert ref.kind == "estimated" and ref.n == 400 and ref.cov.shape == (t.phi_layout.size,) * 2
    assert torch.equal(ref.value, again.value), "the model delegates to the references layer, same seed, same draws"


@pytest.mark.parametrize("wrt", ["theta", "phi"])
def test_iwae_reference_agrees_with_the_quadrature_modules_estimate(wrt: str):
    """∇θ IWAE_2 (self-normalised IWAE gradient) and ∇φ IWAE_2 (DReG) of a k = 2 VAE by this module, and by
    ``quadrature.estimated_iwae`` (the plain reparameterised IWAE gradient, its own draws): two independent unbiased
    estimates of the same gradient, compared by a two-sample max-|z| with Šidák over coordinates, α = 0.001, seeds 0
    and 1. Negative controls: the same test rejects the exact ∇ELBO (quadrature) as ∇IWAE_2, and ∇IWAE_8 (quadrature
    module's estimate) as ∇IWAE_2 — so K reaches the estimator. The reference carries its replicates' count and
    covariance, in the target's dtype."""
    import math

    import scipy.stats as sps

    from gradbench.families.gaussian import GaussianProposal
    from gradbench.models.vae import VAEParams, build
    from gradbench.references import quadrature as Q

    t = build(VAEParams(latent_dim=2, data_dim=5, n_data=2, hidden=[4]), GaussianProposal(mean_shift=0.5), 0)
    objective = Objective(wrt, "iwae", 2)
    ours = iwae_bound_reference(t, objective, 4000, 0)
    theirs = Q.estimated_iwae(t, objective, replicates=4000, seed=1)
    size = (t.layout if wrt == "theta" else t.phi_layout).size
    assert ours.n == 4000 and ours.cov.shape == (size, size) and ours.value.dtype == torch.float64

    def sidak_p(other: torch.Tensor, se: torch.Tensor) -> float:
        z = ((ours.value - other).abs() / se).max().item()
        return -math.expm1(other.numel() * math.log1p(-2 * sps.norm.sf(z)))

    assert sidak_p(theirs.value, (ours.stderr**2 + theirs.stderr**2).sqrt()) > 0.001
    assert sidak_p(t.reference(Objective(wrt, "elbo")).value, ours.stderr) < 0.001
    eight = Q.estimated_iwae(t, Objective(wrt, "iwae", 8), replicates=4000, seed=1)
    assert sidak_p(eight.value, (ours.stderr**2 + eight.stderr**2).sqrt()) < 0.001


def test_iwae_reference_of_a_float32_target_is_float32():
    """The reference comes back in the target's dtype (its moments are accumulated in float64): the bias protocol
    compares it with the estimators' float32 gradients without a silent promotion."""
    from gradbench.families.gaussian import GaussianProposal
    from gradbench.models.vae import VAEParams, build

    t = build(VAEParams(latent_dim=2, data_dim=5, n_data=2, hidden=[4]), GaussianProposal(), 0, dtype=torch.float32)
    for wrt in ("theta", "phi"):
        ref = iwae_bound_reference(t, Objective(wrt, "iwae", 2), 20, 0)
        assert ref.value.dtype == ref.stderr.dtype == torch.float32, wrt


def test_from_replicates_moved_to_a_device_keeps_its_statistics():
    """Asking for a device returns the same mean, s.e., covariance (none above ``MAX_COV_DIM``) and count (on the CPU
    here); ``dtype`` sets the output's dtype; the θ IWAE reference's draws are fixed by its seed (negative control:
    another seed, other draws)."""
    G = torch.randn(200, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    here, moved = from_replicates(G), from_replicates(G, device="cpu")
    assert moved.n == here.n == 200 and moved.kind == "estimated"
    for a, b in ((moved.value, here.value), (moved.stderr, here.stderr), (moved.cov, here.cov)):
        assert b is not None and torch.equal(a, b)
    wide = torch.randn(3, 2049, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # P > MAX_COV_DIM
    moved_wide = from_replicates(wide, device="cpu")
    assert moved_wide.cov is None and torch.equal(moved_wide.stderr, from_replicates(wide).stderr)
    f32 = from_replicates(G, dtype=torch.float32)
    assert f32.value.dtype == f32.stderr.dtype == torch.float32 and torch.equal(f32.value, here.value.float())
    t = make_encoder_target(d=4, k=2, n=2, reference_replicates=50)
    draws = [iwae_bound_reference(t, Objective("theta", "iwae", 2), 50, s).value for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_iwae_reference_draws_in_blocks_of_the_particle_budget(monkeypatch: pytest.MonkeyPatch):
    """With fewer than ``replicates`` replicates per block of ``MAX_PARTICLES`` particles × data points (here 96 / (K n)
    = 16 for 50 replicates, K = 2, n = 3: four draws of 16, 16, 16 and 2), the blocks merge into one reference of all replicates
    whose moments equal the replicates' own (the draws recorded and compared with the one-pass statistics)."""
    import gradbench.references.estimated as E

    t = make_encoder_target(d=4, k=2, n=3, reference_replicates=50)

    monkeypatch.setattr(E, "MAX_PARTICLES", 96)
    sizes, drawn = record_blocks(monkeypatch, E)
    ref = E.iwae_bound_reference(t, Objective("theta", "iwae", 2), 50, 0)
    assert sizes == [16, 16, 16, 2] and all(type(R) is int for R in sizes) and ref.n == 50
    G = torch.cat(drawn)
    np.testing.assert_allclose(ref.value.numpy(), G.mean(0).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ref.cov.numpy(), np.cov(G.numpy().T), rtol=1e-9, atol=1e-14)
