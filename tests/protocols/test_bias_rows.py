"""The bias protocol's rows are their formulas (protocols.bias, docs/design.md §9.2), group by group.

Per parameter group, with d = ḡ − g*, u = d/‖d‖ and the reference's per-coordinate variance v (diag(C)/n_ref for an
estimated reference with covariance C, else its stderr², plus any quadrature/enumeration error²):
* ``bias_norm`` = ‖d‖ with the delta-method s.e. hypot(sd((G − ḡ)u)/√n, √(u²·v)); at d = 0, √(Σ_j s_j²/n);
* ``rel_*`` divide by ‖g*‖ (NaN when g* = 0 in the group);
* the test and the interval rows are :func:`gradbench.stats.bias_test` and :func:`gradbench.stats.bias_norm_interval`
  on the group's columns with the reference's noise model, each on its own generator, seeded [seed, group index, 0]
  and [seed, group index, 1].
Each value is recomputed here independently of the protocol (deterministic arithmetic: a relative tolerance of 1e-12
covers the different summation order, no Monte Carlo error is involved). Negative controls: the s.e. without the
reference's variance, and the rows of a reference shifted in one group, differ from the protocol's by far more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradbench.core import GradSample, ParamGroup, ParamLayout, Reference
from gradbench.protocols import ProtocolContext
from gradbench.protocols.bias import bias
from gradbench.references.estimated import streaming_reference
from gradbench.stats import RARE_STATE_COUNT, ReferenceNoise, bias_norm_interval, bias_test

EPS = float(np.finfo(np.float64).eps)
LAYOUT = ParamLayout((ParamGroup("a", (2,)), ParamGroup("b", (1,))))
GROUPS = {"all": slice(0, 3), "a": slice(0, 2), "b": slice(2, 3)}
N, N_REF = 300, 400


def _gaussian(seed: int, n: int, scale: tuple[float, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(n, len(scale), generator=gen, dtype=torch.float64) * torch.tensor(scale, dtype=torch.float64)


def _sample(G: torch.Tensor) -> GradSample:
    return GradSample(G, LAYOUT, torch.ones(G.shape[0], dtype=torch.float64))


def _rows(sample: GradSample, reference: Reference, ctx: ProtocolContext) -> dict[tuple[str, str], dict]:
    return {(r["param_group"], r["metric"]): r for r in bias(sample, reference, ctx)}


def _references() -> dict[str, tuple[Reference, ReferenceNoise]]:
    """Each kind of reference, with the noise model the protocol must build from it (written out here)."""
    Y = _gaussian(1, N_REF, (1.0, 2.0, 0.5))
    full = streaming_reference(lambda R: Y, N_REF, N_REF)
    cov, se = full.cov.numpy(), full.stderr.numpy()
    err = np.array([0.01, 0.02, 0.03])
    value = full.value
    return {
        "estimated": (full, ReferenceNoise(cov, N_REF, None)),
        "estimated+error": (Reference(value, "estimated", stderr=full.stderr, cov=full.cov, n=N_REF,
                                      error=torch.tensor(err)), ReferenceNoise(cov, N_REF, err**2)),
        "diagonal": (Reference(value, "estimated", stderr=full.stderr), ReferenceNoise(None, None, se**2, True)),
        "diagonal+error": (Reference(value, "estimated", stderr=full.stderr, error=torch.tensor(err)),
                           ReferenceNoise(None, None, se**2 + err**2, True)),
        "quadrature": (Reference(value, "quadrature", error=torch.tensor(err)), ReferenceNoise(None, None, err**2)),
        "exact": (Reference(value), ReferenceNoise()),
    }


def _ref_var(noise: ReferenceNoise, sl: slice) -> np.ndarray:
    v = np.zeros(sl.stop - sl.start)
    if noise.cov is not None:
        v = v + np.diag(noise.cov)[sl] / noise.n
    if noise.var is not None:
        v = v + noise.var[sl]
    return v


@pytest.mark.parametrize("kind", ["estimated", "estimated+error", "diagonal", "diagonal+error", "quadrature", "exact"])
def test_rows_are_their_formulas(kind):
    reference, noise = _references()[kind]
    G = _gaussian(2, N, (1.0, 2.0, 0.5)) + torch.tensor([0.05, -0.1, 0.2], dtype=torch.float64)  # a small bias
    ctx = ProtocolContext(seed=7, eps=EPS)
    rows = _rows(_sample(G), reference, ctx)
    Gn, g = G.numpy(), reference.value.numpy()
    assert {grp for grp, _ in rows} == set(GROUPS)
    for i, (grp, sl) in enumerate(GROUPS.items()):
        Gs, gs, nz = Gn[:, sl], g[sl], noise.sliced(sl)
        d = Gs.mean(0) - gs
        norm, ref_norm = float(np.linalg.norm(d)), float(np.linalg.norm(gs))
        u = d / norm
        se_sample = float(((Gs - Gs.mean(0)) @ u).std(ddof=1)) / math.sqrt(N)
        v = _ref_var(noise, sl)
        se = math.hypot(se_sample, math.sqrt(float(u**2 @ v)))
        test = bias_test(Gs, gs, EPS, np.random.default_rng([7, i, 0]), nz)
        bn = bias_norm_interval(Gs, gs, EPS, np.random.default_rng([7, i, 1]), nz, 0.95)
        expected = {
            "bias_norm": (norm, se), "rel_bias": (norm / ref_norm, se / ref_norm),
            "rel_bias_debiased": (bn.signed_sqrt / ref_norm, math.nan),
            "rel_bias_ci_low": (bn.ci_low / ref_norm, math.nan), "rel_bias_ci_high": (bn.ci_high / ref_norm, math.nan),
            "bias_pvalue": (test.pvalue, math.nan), "bias_zmax": (test.zmax, math.nan),
        }
        assert {m for gr, m in rows if gr == grp} == set(expected)
        for metric, (value, stderr) in expected.items():
            r = rows[(grp, metric)]
            assert r["value"] == pytest.approx(value, rel=1e-12, abs=1e-300), (grp, metric)
            assert (math.isnan(stderr) and math.isnan(r["stderr"])) or r["stderr"] == pytest.approx(stderr, rel=1e-12)
        assert rows[(grp, "bias_pvalue")]["method"] == test.method
        if kind != "exact":  # negative control: the reference's variance is a visible part of the s.e.
            assert rows[(grp, "bias_norm")]["stderr"] > se_sample * (1 + 1e-3)
    # negative control: a reference shifted by 1 in group b moves b's and all's rows, not a's
    shifted = Reference(reference.value + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), reference.kind,
                        reference.stderr, reference.cov, reference.n, reference.error)
    moved = _rows(_sample(G), shifted, ctx)
    assert moved[("a", "bias_norm")]["value"] == rows[("a", "bias_norm")]["value"]
    assert moved[("b", "bias_norm")]["value"] > rows[("b", "bias_norm")]["value"] + 0.5


def test_rows_at_the_edges():
    """n = 1: the plug-in ‖d‖ with NaN s.e., no interval rows; d = 0 exactly (rows ±x around g*): the s.e. is
    √(Σ_j s_j²/n); g* = 0 in a group: its relative rows are NaN; no reference: no rows."""
    g = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)  # group b's g* = 0
    ref = Reference(g)
    ctx = ProtocolContext(seed=0, eps=EPS)
    one = _rows(_sample(g.unsqueeze(0) + torch.tensor([[0.75, 1.0, 2.0]], dtype=torch.float64)), ref, ctx)
    assert one[("all", "bias_norm")]["value"] == pytest.approx(math.sqrt(0.75**2 + 1 + 4), rel=1e-15)
    assert math.isnan(one[("all", "bias_norm")]["stderr"]) and ("all", "rel_bias_ci_low") not in one
    assert ("all", "bias_pvalue") in one

    x = torch.tensor([[1.0, 2.0, 0.5], [-1.0, -2.0, -0.5], [0.25, -0.5, 1.0], [-0.25, 0.5, -1.0]], dtype=torch.float64)
    G = g + x  # mean exactly g*
    zero = _rows(_sample(G), ref, ctx)
    for grp, sl in GROUPS.items():
        r = zero[(grp, "bias_norm")]
        assert r["value"] == 0.0
        assert r["stderr"] == pytest.approx(math.sqrt(float(x.numpy()[:, sl].var(0, ddof=1).sum()) / 4), rel=1e-14)
    assert math.isnan(zero[("b", "rel_bias")]["value"]) and math.isnan(zero[("b", "rel_bias_ci_high")]["value"])
    assert zero[("a", "rel_bias")]["value"] == 0.0
    assert bias(_sample(G), None, ctx) == []


def test_rare_states_mark_the_rows_inconclusive():
    """R·q_min below log(10³): the p-value and interval rows' methods start "inconclusive" and a bias_rare_count row
    gives R·q_min; above it (negative control), a verdict: no such prefix, the count row still there."""
    G = _gaussian(3, 200, (1.0, 1.0, 1.0))
    ref = Reference(torch.ones(3, dtype=torch.float64))
    for q_min, rare in ((0.5 * RARE_STATE_COUNT / 200, True), (2.0 * RARE_STATE_COUNT / 200, False)):
        rows = _rows(_sample(G), ref, ProtocolContext(seed=0, eps=EPS, rare_q_min=q_min))
        for metric in ("bias_pvalue", "bias_zmax", "rel_bias_ci_low", "rel_bias_ci_high"):
            assert rows[("all", metric)]["method"].startswith("inconclusive") == rare, (metric, q_min)
        assert rows[("b", "bias_rare_count")]["value"] == pytest.approx(200 * q_min, rel=1e-15)
    assert ("all", "bias_rare_count") not in _rows(_sample(G), ref, ProtocolContext(seed=0, eps=EPS))
