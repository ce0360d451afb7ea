"""How each kind of reference enters the bias test's noise model (protocols.bias.reference_noise, docs/design.md §8.2).

An estimated reference above its covariance cap keeps per-coordinate standard errors only: a Monte Carlo estimate whose
covariance off the diagonal exists but is unknown, so it is marked ``estimated_diagonal`` and the test takes max-t. A
quadrature/enumeration ``error`` is a deterministic per-coordinate bound and is not marked (Hotelling stays reachable).
Negative control: the same replicates with their covariance kept give a two-sample noise model, no diagonal mark.
"""

from __future__ import annotations

import numpy as np
import torch

from gradbench.core import Reference
from gradbench.protocols.bias import reference_noise
from gradbench.references.estimated import streaming_reference
from gradbench.stats import bias_test

EPS = float(np.finfo(np.float64).eps)


def _replicates(seed: int, n: int, P: int = 6) -> torch.Tensor:
    """n rows with a strongly correlated covariance (one common factor plus a little independent noise)."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return common + 0.3 * torch.randn(n, P, generator=gen, dtype=torch.float64)


def test_an_estimated_reference_above_its_covariance_cap_is_marked_diagonal_only():
    Y = _replicates(0, 4000)
    capped = streaming_reference(lambda R: Y, Y.shape[0], Y.shape[0], max_cov_dim=2)
    assert capped.cov is None and capped.stderr is not None
    noise = reference_noise(capped)
    assert noise.estimated_diagonal and noise.cov is None
    np.testing.assert_allclose(noise.var, capped.stderr.numpy() ** 2, rtol=1e-15)

    full = reference_noise(streaming_reference(lambda R: Y, Y.shape[0], Y.shape[0]))
    assert full.cov is not None and full.n == 4000 and full.var is None and not full.estimated_diagonal


def test_a_quadrature_error_bound_is_not_marked():
    ref = Reference(torch.zeros(3, dtype=torch.float64), kind="quadrature", error=torch.full((3,), 1e-3))
    noise = reference_noise(ref)
    assert not noise.estimated_diagonal and noise.var is not None


def test_the_bias_test_takes_max_t_with_a_diagonal_only_reference_and_hotelling_with_its_covariance():
    """R = 300 replicates in P = 6 coordinates (r = 6, Welch ν large): with the reference's covariance the test is
    two-sample Hotelling; with its diagonal only, max-t (whitening by the diagonal would be wrong)."""
    Y = _replicates(1, 4000)
    G = _replicates(2, 300).numpy()
    capped = streaming_reference(lambda R: Y, Y.shape[0], Y.shape[0], max_cov_dim=2)
    full = streaming_reference(lambda R: Y, Y.shape[0], Y.shape[0])
    diag = bias_test(G, capped.value.numpy(), EPS, np.random.default_rng(0), reference_noise(capped), n_boot=199)
    assert diag.method.startswith("max-t") and "diagonal-only estimated ref" in diag.method, diag.method
    two = bias_test(G, full.value.numpy(), EPS, np.random.default_rng(0), reference_noise(full), n_boot=199)
    assert two.method.startswith("hotelling") and "two-sample" in two.method, two.method
