"""The bias protocol's rows are their formulas (protocols.bias, docs/design.md §9.2), group by group.

Per parameter group, with d = ḡ − g*, u = d/‖d‖ and the reference's per-coordinate variance v (diag(C)/n_ref for an
estimated reference with covariance C, else its stderr², plus any quadrature/enumeration error²):
* ``bias_norm`` = ‖d‖ with the delta-method s.e. hypot(sd((G − ḡ)u)/√n, √(u²·v)); at d = 0, √(Σ_j s_j²/n);
* ``rel_*`` divide by ‖g*‖ (NaN when g* = 0 in the group);
* the test and the interval rows are :func:`gradbench.stats.bias_test` and :func:`gradbench.stats.bias_norm_interval`
  on the group's columns with the reference's noise model, each on its own generator, seeded [seed, group index, 0]
  and [seed, group index, 1].
The edges (no finite replicate, two, ḡ = g* exactly, g* = 0 in a group), the discrete targets' ``atoms``, the rows'
``method`` texts and the run's multiple-testing rows (:func:`multiplicity_rows`) are checked the same way.
Each value is recomputed here independently of the protocol (deterministic arithmetic: a relative tolerance of 1e-12
covers the different summation order, no Monte Carlo error is involved). Negative controls: the s.e. without the
reference's variance, and the rows of a reference shifted in one group, differ from the protocol's by far more.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradbench.core import GradSample, ParamGroup, ParamLayout, Reference
from gradbench.protocols import ProtocolContext
from gradbench.protocols.bias import bias, multiplicity_rows
from gradbench.references.estimated import streaming_reference
from gradbench.stats import RARE_STATE_COUNT, ReferenceNoise, bias_norm_interval, bias_test, rare_state_verdict

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


def test_multiplicity_rows_are_bh_and_holm_over_the_conclusive_family():
    """Conclusive p-values 0.04, 0.01, 0.03 of param_group "all" and one inconclusive: BH q-values over m = 3,
    written out from q_(i) = min_{j ≥ i} m p_(j)/j (Benjamini & Hochberg 1995): 0.04, 0.03, 0.04; Holm's step-down
    max_{j ≤ i} (m − j + 1) p_(j) (Holm 1979): 0.06, 0.03, 0.06; the inconclusive test and rows that are not
    "all" p-values are not in the family (negative control: counting the inconclusive 1e-9 in makes m = 4, and the
    q-values 0.04, 0.02, 0.04, 4e-9). Each row copies its p-value row's cell columns, has no s.e., and says over what it was corrected."""
    inconclusive = rare_state_verdict(1e-4, 100) + "; hotelling"
    t = pd.DataFrame({"cell_id": ["a", "b", "c", "d", "a", "a"],
                      "metric": ["bias_pvalue"] * 5 + ["bias_norm"], "param_group": ["all"] * 4 + ["x", "all"],
                      "value": [0.04, 0.01, 0.03, 1e-9, 1e-6, 5.0], "stderr": [0.1] * 6,
                      "method": ["hotelling", "max-t", "max-t", inconclusive, "max-t", ""]},
                     index=[10, 11, 12, 13, 14, 15])
    out = multiplicity_rows(t)
    assert list(out.index) == list(range(8))
    assert list(out["metric"]) == ["bias_qvalue"] * 4 + ["bias_pvalue_holm"] * 4
    assert list(out["cell_id"]) == ["a", "b", "c", "d"] * 2 and set(out["param_group"]) == {"all"}
    np.testing.assert_allclose(out["value"].to_numpy()[:3], [0.04, 0.03, 0.04], rtol=1e-12)
    np.testing.assert_allclose(out["value"].to_numpy()[4:7], [0.06, 0.03, 0.06], rtol=1e-12)
    assert math.isnan(out["value"].iloc[3]) and math.isnan(out["value"].iloc[7])
    assert out["stderr"].isna().all()
    where = "over the run's 3 bias tests (bias_pvalue rows of param_group 'all'; 1 inconclusive (rare states) left out)"
    assert out["method"].iloc[0] == f"Benjamini-Hochberg q-value {where}"
    assert out["method"].iloc[4] == f"Holm-adjusted p-value {where}"
    all_in = multiplicity_rows(t.assign(method="max-t"))  # negative control: m = 4, no rows left out
    np.testing.assert_allclose(all_in["value"].to_numpy()[:4], [0.04, 0.02, 0.04, 4e-9], rtol=1e-12)
    assert "left out" not in all_in["method"].iloc[0]
    assert all_in["method"].iloc[0].endswith("over the run's 4 bias tests (bias_pvalue rows of param_group 'all')")
    no_method = multiplicity_rows(t.drop(columns="method"))  # without a method column nothing is inconclusive
    np.testing.assert_allclose(no_method["value"].to_numpy(), all_in["value"].to_numpy(), rtol=1e-15)
    assert multiplicity_rows(t.iloc[0:0]).empty and multiplicity_rows(t[t["metric"] == "bias_norm"]).empty
    assert multiplicity_rows(t.drop(columns="metric")).empty


def test_rows_with_no_or_two_replicates():
    """No finite replicate: every row NaN (the plug-in, its s.e., the test), no interval rows. Two replicates, the
    smallest sample with a spread: the delta-method s.e. hypot(sd((G − ḡ)u)/√2, 0) when d ≠ 0, √(Σ_j s_j²/2) when
    d = 0 exactly, and the interval rows are there; negative control: the two s.e. formulas differ on the same rows."""
    ref = Reference(torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64))
    ctx = ProtocolContext(seed=0, eps=EPS)
    none = _rows(_sample(torch.full((3, 3), math.nan, dtype=torch.float64)), ref, ctx)
    assert set(none) == {(g, m) for g in GROUPS for m in ("bias_norm", "rel_bias", "bias_pvalue", "bias_zmax")}
    assert all(math.isnan(r["value"]) and math.isnan(r["stderr"]) for r in none.values())

    x = torch.tensor([[1.0, 2.0, 0.5], [-1.0, -2.0, -0.5]], dtype=torch.float64)
    s_zero = math.sqrt(float(x.numpy().var(0, ddof=1).sum()) / 2)
    zero = _rows(_sample(ref.value + x), ref, ctx)  # ḡ = g* exactly
    assert zero[("all", "bias_norm")]["value"] == 0.0
    assert zero[("all", "bias_norm")]["stderr"] == pytest.approx(s_zero, rel=1e-14)
    shift = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    off = _rows(_sample(ref.value + x + shift), ref, ctx)  # d = (0.5, 0, 0): u = e_1, sd((G − ḡ)u) = √2
    assert off[("all", "bias_norm")]["value"] == 0.5
    assert off[("all", "bias_norm")]["stderr"] == pytest.approx(1.0, rel=1e-14) and s_zero != pytest.approx(1.0)
    assert {("all", "rel_bias_ci_low"), ("all", "rel_bias_ci_high"), ("all", "rel_bias_debiased")} <= set(off)


def test_discrete_targets_pass_atoms_to_the_test():
    """A zero-variance coordinate whose mean is off g* (a latent value never drawn): on a continuous target the test
    says "deterministic", p = 0; on a discrete one (``atoms``) an unseen rare state may explain it and the row is the
    test's ``atoms`` answer (negative control: the two p-values and methods differ)."""
    gen = torch.Generator().manual_seed(4)
    G = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    G[:, 2] = 1.0  # constant: its mean 1 is off g*_2 = 0.999
    ref = Reference(torch.tensor([0.0, 0.0, 0.999], dtype=torch.float64))
    rows = {atoms: _rows(_sample(G), ref, ProtocolContext(seed=0, eps=EPS, atoms=atoms))[("all", "bias_pvalue")]
            for atoms in (False, True)}
    expect = bias_test(G.numpy(), ref.value.numpy(), EPS, np.random.default_rng([0, 0, 0]), atoms=True)
    assert rows[True]["value"] == expect.pvalue and rows[True]["method"] == expect.method
    assert rows[False]["value"] == 0.0 and rows[False]["method"].startswith("deterministic")
    assert not rows[True]["method"].startswith("deterministic")


NEYMAN = "95% Neyman interval of ||b||/||g*|| (generalised chi-square inversion)"
CONSERVATIVE = ("; conservative: the reference's covariance is known on its diagonal only, its noise is taken as one "
                "component carrying its whole trace (the heaviest-tailed case)")


@pytest.mark.parametrize("kind", ["estimated", "estimated+error", "diagonal", "diagonal+error", "quadrature", "exact"])
def test_rows_say_what_they_are(kind):
    """Each row's ``method`` as a reader sees it: the interval is marked conservative for a diagonal-only estimated
    reference only (docs/design.md §8.2) — not for a quadrature error bound, which is a per-coordinate variance too
    (negative control); the plug-in says it is noise-inflated, the debiased value what it is, the rare-state count its
    threshold."""
    reference, _ = _references()[kind]
    G = _gaussian(2, N, (1.0, 2.0, 0.5))
    rows = _rows(_sample(G), reference, ProtocolContext(seed=0, eps=EPS, rare_q_min=0.5))
    ci = NEYMAN + (CONSERVATIVE if kind.startswith("diagonal") else "")
    for grp in GROUPS:
        assert rows[(grp, "rel_bias_ci_low")]["method"] == ci and rows[(grp, "rel_bias_ci_high")]["method"] == ci
        assert rows[(grp, "rel_bias")]["method"] == "plug-in ||mean - g*|| / ||g*||: noise-inflated"
        assert rows[(grp, "rel_bias_debiased")]["method"] == "signed sqrt of the unbiased ||b||^2"
        assert rows[(grp, "bias_rare_count")]["method"] == (
            f"R·q_min: expected draws of the rarest value; below log(10³) = {RARE_STATE_COUNT:.3g} "
            "the bias test is inconclusive")
