"""How each kind of reference enters the bias test's noise model (protocols.bias.reference_noise, docs/design.md §8.2).

An estimated reference above its covariance cap keeps per-coordinate standard errors only: a Monte Carlo estimate whose
covariance off the diagonal exists but is unknown, so it is marked ``estimated_diagonal`` and the test takes max-t. A
quadrature/enumeration ``error`` is a deterministic per-coordinate bound and is not marked (Hotelling stays reachable).
Negative control: the same replicates with their covariance kept give a two-sample noise model, no diagonal mark.
"""

from __future__ import annotations

import numpy as np
import torch

from gradbench.core import GradSample, ParamGroup, ParamLayout, Reference
from gradbench.protocols import ProtocolContext
from gradbench.protocols.bias import bias, reference_noise
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


def test_the_protocol_rows_say_which_branch_and_that_the_interval_is_conservative():
    """Through the bias protocol: the p-value row's method names the diagonal-only reference and max-t; the interval
    rows say "conservative" (docs/design.md §8.2: the reference's share is taken as one component carrying its
    trace). Control: with the covariance kept, neither."""
    Y = _replicates(1, 4000, P=3)
    G = _replicates(2, 300, P=3)
    sample = GradSample(G, ParamLayout((ParamGroup("a", (2,)), ParamGroup("b", (1,)))),
                        torch.ones(300, dtype=torch.float64))
    ctx = ProtocolContext(seed=0, eps=EPS)
    for cap, marked in ((2, True), (2048, False)):
        rows = {(r["param_group"], r["metric"]): r["method"]
                for r in bias(sample, streaming_reference(lambda R: Y, 4000, 4000, max_cov_dim=cap), ctx)}
        p_method, ci_method = rows[("all", "bias_pvalue")], rows[("all", "rel_bias_ci_low")]
        assert ("diagonal-only estimated ref" in p_method) == marked and p_method.startswith("max-t") == marked
        assert ("conservative" in ci_method) == marked, ci_method
