"""The Gauss–Hermite rules on their own (quadrature.gauss_hermite), not only through the references they feed.

An n-point Gauss rule for the weight e^{−u²/2} is exact for polynomials of degree ≤ 2n − 1 and for no polynomial
of degree 2n with a nonzero leading term (its error there is n!·c ≠ 0; e.g. Davis & Rabinowitz, Methods of
Numerical Integration, 2nd ed., §2.7). The rule here is normalised to E_{N(0, I_k)}: weights sum to 1 and the
moments are those of N(0, 1), E[u^j] = (j − 1)!! for even j, 0 for odd j. Checked: node count n^k, Σω = 1, every
moment up to degree 2n − 1 per axis (and the mixed moments of the product rule), and — the negative control —
that the degree-2n moment is wrong by the amount Gauss's error formula gives: E[u^{2n}] − rule = n!.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradbench.references.quadrature import gauss_hermite


def _normal_moment(j: int) -> float:
    """E[u^j] for u ~ N(0, 1): (j − 1)!! for even j, 0 for odd j."""
    return 0.0 if j % 2 else float(math.prod(range(j - 1, 0, -2)))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12])
def test_one_axis_rule_is_exact_to_degree_2n_minus_1(n):
    """n nodes, Σω = 1 to 1e-14, E[u^j] exact for j ≤ 2n − 1 (relative 1e-11 of Σω|u|^j, which bounds the rounding),
    and the degree-2n moment misses by exactly n! (Gauss's error term E[p_n²] for the monic Hermite polynomial p_n
    of the rule: E[He_n(u)²] = n!) — a rule that is "too exact" or a dropped node fails here."""
    u, lw = gauss_hermite(n, 1)
    assert u.shape == (n, 1) and lw.shape == (n,)
    u, w = u[:, 0].numpy(), torch.exp(lw).numpy()
    assert w.sum() == pytest.approx(1.0, abs=1e-14)
    assert len(np.unique(u)) == n and (w > 0).all()
    for j in range(2 * n):
        scale = float((w * np.abs(u) ** j).sum())
        assert abs(float((w * u**j).sum()) - _normal_moment(j)) <= 1e-11 * max(scale, 1.0), (n, j)
    miss = _normal_moment(2 * n) - float((w * u ** (2 * n)).sum())
    assert miss == pytest.approx(math.factorial(n), rel=1e-9)


@pytest.mark.parametrize("n, k", [(3, 2), (4, 3)])
def test_product_rule_is_the_tensor_product(n, k):
    """n^k nodes, Σω = 1, every mixed moment E[u_1^a u_2^b] (a, b ≤ 2n − 1) equals the product of the N(0, 1)
    moments; the degree-2n moment along each axis misses by n! (the negative control, per axis)."""
    u, lw = gauss_hermite(n, k)
    assert u.shape == (n**k, k) and lw.shape == (n**k,)
    u, w = u.numpy(), torch.exp(lw).numpy()
    assert w.sum() == pytest.approx(1.0, abs=1e-13)
    assert len({tuple(row) for row in u}) == n**k
    for a in range(2 * n):
        for b in range(2 * n):
            got = float((w * u[:, 0] ** a * u[:, 1] ** b).sum())
            scale = float((w * np.abs(u[:, 0]) ** a * np.abs(u[:, 1]) ** b).sum())
            assert abs(got - _normal_moment(a) * _normal_moment(b)) <= 1e-11 * max(scale, 1.0), (a, b)
    for axis in range(k):
        miss = _normal_moment(2 * n) - float((w * u[:, axis] ** (2 * n)).sum())
        assert miss == pytest.approx(math.factorial(n), rel=1e-9)


def test_dropped_node_is_detected():
    """Negative control for the checks above: the 8-point rule without its last node has 7 nodes, weights summing
    to 1 − ω_8 and a wrong odd moment — each check on its own fails."""
    u, lw = gauss_hermite(8, 1)
    u, w = u[:-1, 0].numpy(), torch.exp(lw[:-1]).numpy()
    assert len(u) != 8
    assert abs(w.sum() - 1.0) > 1e-6
    assert abs(float((w * u).sum())) > 1e-6


def test_large_rule_stays_finite_where_the_recurrence_overflows():
    """n = 400 (a k = 1 ELBO reference doubles its default 200 nodes to 400): numpy's ``hermegauss`` gives NaN
    weights there (the negative control: the failure this rule avoids); this rule's weights are finite, sum to 1,
    give E[u^j] for j ≤ 40 to 1e-11 of Σω|u|^j, and only nodes with |u| > 35 whose weight is exactly 0 are
    dropped."""
    with np.errstate(all="ignore"):
        _, w_numpy = np.polynomial.hermite_e.hermegauss(400)
    assert not np.isfinite(w_numpy).all()
    u, lw = gauss_hermite(400, 1)
    u, w = u[:, 0].numpy(), torch.exp(lw).numpy()
    assert np.isfinite(lw.numpy()).all() and w.sum() == pytest.approx(1.0, abs=1e-13)
    assert 390 <= len(u) <= 400 and len(np.unique(u)) == len(u)
    from scipy.special import roots_hermitenorm

    full, w_full = roots_hermitenorm(400)
    assert (np.abs(full[w_full == 0]) > 35).all()
    for j in range(0, 41, 2):
        scale = float((w * np.abs(u) ** j).sum())
        assert abs(float((w * u**j).sum()) - _normal_moment(j)) <= 1e-11 * max(scale, 1.0), j
