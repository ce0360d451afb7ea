"""Conformance kit: does a model, a family or an estimator keep the contract (``gradbench.contracts``)?

Use it in a plugin's own pytest::

    from gradbench.testing import check_estimator, check_family, check_model

    def test_my_model():
        check_model("factor", {"n_data": 2})            # a registered model (built in float64 and float32)

    def test_my_family():
        check_family(MyFamily(...), x, phi)             # a family object at (φ, x)

    def test_rloo_on_my_model():
        check_estimator("rloo", target, unbiased=True)  # bias test and its negative control

Each function raises :class:`ConformanceError` with one line naming the broken rule, or returns a :class:`Report` of
what it checked and measured. Every stochastic check is a test at level ``alpha`` (default 0.001) scaled by the
Monte Carlo standard error of the sample, with the seed given (default 0), never a bare tolerance:

* **noise reuse** — the same noise gives the same sample (``sample`` is a deterministic function of ``noise``), the
  same seed gives the same noise; samples and log-densities keep the dtype (float32 and float64) and device;
* **sampler agrees with log q** — for a finite family (``enumerate``), Σ_s q(s) = 1 and the frequencies of R draws
  match q (Pearson's χ² per data point, Bonferroni over the points); for any family with ``score``,
  E_q ∇φ log q_φ(z) = 0 (the score identity) by the bias test;
* **declared capabilities really present** — each declared capability's members exist (``CAPABILITY_MEMBERS``), a
  family's ``logits`` agree with its ``log_prob``, a ``gumbel_noise`` family samples 1[u < σ(ℓ)] /
  onehot(argmax(ℓ − log(−log u))), and a registered model's ``provides`` are all capabilities of the built target;
* **references** — float64 in float32 runs; ∇θ log p(x) equal to enumeration over the latent states (binary or
  categorical latents) or to central finite differences of the model's ``log_marginal(θ, x)`` where it has one;
* **estimators** — shapes, dtype, cost, ``wrt`` = the registered objective, same seed → same estimate; with
  ``unbiased=True`` the bias test passes against the reference *and* a broken variant (the same replicates shifted
  by ``BROKEN_SE`` standard errors per coordinate) is rejected: the negative control that the test has power here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradbench import registry
from gradbench.contracts import CAPABILITIES, CAPABILITY_MEMBERS, LatentSpace, Objective
from gradbench.core import GradSample
from gradbench.seeding import make_generator
from gradbench.target import ComposedTarget

ALPHA = 0.001  # level of every stochastic check
BROKEN_SE = 6.0  # the negative control's bias, in standard errors of the mean per coordinate
FD_STEP = 1e-5  # central finite differences (float64): truncation O(h²), rounding O(eps/h)
FD_RTOL = 1e-6
F32_RTOL = 1e-3  # float32 vs float64 reference of the same rounded parameters


TARGET_MEMBERS: dict[str, tuple[tuple[str, str], ...]] = {  # a hand-written target implements them itself
    "log_prob": (("target", "log_proposal"),), "score": (("target", "log_q_score"),),
    "analytic_kl": (("target", "kl_prior"), ("target", "log_lik")), "exact_posterior": (("target", "sample_posterior"),),
    "state_probabilities": (("target", "state_probabilities"),),
}


class ConformanceError(AssertionError):
    """One line naming the contract rule a model, family or estimator breaks."""


@dataclass
class Report:
    """What a check measured: ``checks`` passed, ``pvalues`` of its stochastic tests, ``skipped`` (rule: why)."""

    name: str
    checks: list[str] = field(default_factory=list)
    pvalues: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def ok(self, what: str) -> None:
        self.checks.append(what)


def _fail(name: str, message: str) -> None:
    raise ConformanceError(f"{name}: {message}")


def mean_test(samples: Tensor, expected: Tensor, *, seed: int = 0, atoms: bool = False) -> float:
    """p-value of H0: E[samples_r] = expected, from R i.i.d. rows [R, P] (:func:`gradbench.stats.bias_test`:
    Hotelling's T² scaled by the sample covariance, bootstrap-calibrated where the sample is small)."""
    from gradbench.stats import bias_test

    G = samples.detach().double().cpu().numpy()
    eps = float(torch.finfo(samples.dtype).eps)
    return float(bias_test(G, expected.detach().double().cpu().numpy(), eps, np.random.default_rng(seed),
                           atoms=atoms).pvalue)


def frequency_test(idx: Tensor, q: Tensor, min_expected: float = 5.0) -> float:
    """p-value of H0: the draws idx [R, N] of state indices at data point n follow q[:, n] ([S, N]): Pearson's χ²
    goodness of fit per data point (states with R·q < ``min_expected`` pooled into one cell), Bonferroni over the
    N points (Pearson 1900; the usual χ² approximation needs expected counts ≥ 5)."""
    from scipy.stats import chisquare

    R, N = idx.shape
    pvalues = []
    for n in range(N):
        expected = (R * q[:, n]).cpu().numpy()
        observed = torch.bincount(idx[:, n], minlength=q.shape[0]).double().cpu().numpy()
        small = expected < min_expected
        if small.any():
            expected = np.append(expected[~small], expected[small].sum())
            observed = np.append(observed[~small], observed[small].sum())
        if len(expected) > 1:
            pvalues.append(float(chisquare(observed, expected * observed.sum() / expected.sum()).pvalue))
    return min(1.0, len(pvalues) * min(pvalues)) if pvalues else 1.0


# -- families ------------------------------------------------------------------------------------
def _member(obj: Any, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _states(latent: LatentSpace, dtype: torch.dtype, device: Any) -> Tensor:
    from gradbench.references.enumeration import latent_states

    return latent_states(latent, dtype=dtype, device=device)


def check_family(family: Any, x: Tensor, phi: dict[str, Tensor], *, R: int = 4000, seed: int = 0,
                 alpha: float = ALPHA, name: str | None = None) -> Report:
    """The family contract at (φ, x): declared capabilities known and present, noise reuse, dtype, and a sampler that
    agrees with log q (exact frequencies for a finite family, the score identity otherwise)."""
    name = name or type(family).__name__
    rep = Report(name)
    caps = frozenset(getattr(family, "capabilities", ()))
    unknown = sorted(caps - CAPABILITIES)
    if unknown:
        _fail(name, f"declares unknown capabilities {', '.join(unknown)} (known: gradbench.contracts.CAPABILITIES)")
    for cap in sorted(caps):
        for owner, member in CAPABILITY_MEMBERS.get(cap, ()):
            if owner == "family" and not _member(family, member):
                _fail(name, f"declares {cap!r} but has no {member}()")
    rep.ok("declared capabilities known and present")
    for m in ("noise", "sample"):
        if not _member(family, m):
            _fail(name, f"has no {m}() (every family draws through noise() and sample())")
    N = x.shape[0]
    for dtype in (torch.float64, torch.float32):
        xd, phid = x.to(dtype), {k: v.to(dtype) for k, v in phi.items()}
        u1 = family.noise((3, N), make_generator(seed), dtype, x.device)
        u2 = family.noise((3, N), make_generator(seed), dtype, x.device)
        if not torch.equal(u1, u2):
            _fail(name, "noise() differs for two generators with the same seed (randomness must come from gen)")
        if u1.dtype != dtype or tuple(u1.shape[:2]) != (3, N):
            _fail(name, f"noise((3, N), …, {dtype}) has shape {tuple(u1.shape)} and dtype {u1.dtype}: expected "
                        f"[3, N={N}, ...] and {dtype}")
        z1, z2 = family.sample(phid, xd, u1), family.sample(phid, xd, u1.clone())
        if not torch.equal(z1, z2):
            _fail(name, "sample(φ, x, noise) differs for the same noise (it must be a deterministic function of it)")
        if z1.dtype != dtype or tuple(z1.shape[:2]) != (3, N) or z1.device != x.device:
            _fail(name, f"sample() gives shape {tuple(z1.shape)}, {z1.dtype} on {z1.device}: expected [3, N, D], "
                        f"{dtype} on {x.device}")
        if "log_prob" in caps:
            lq = family.log_prob(phid, xd, z1)
            if tuple(lq.shape) != (3, N) or lq.dtype != dtype or not bool(torch.isfinite(lq).all()):
                _fail(name, f"log_prob of its own samples has shape {tuple(lq.shape)}, {lq.dtype}, finite = "
                            f"{bool(torch.isfinite(lq).all())}: expected [3, N] finite {dtype}")
    rep.ok("same seed → same noise; same noise → same sample; dtype/shape of noise, sample, log_prob (float32/64)")

    latent = family.latent
    x64, phi64 = x.double(), {k: v.double() for k, v in phi.items()}
    if "gumbel_noise" in caps:
        from gradbench.families.categorical import gumbel, one_hot_argmax

        u = family.noise((64, N), make_generator(seed), torch.float64, x.device)
        ell = family.logits(phi64, x64)
        if u.shape[-1] != ell.shape[-1]:
            _fail(name, f"declares 'gumbel_noise' but its noise has {u.shape[-1]} uniforms per data point, not one per "
                        f"logit ({ell.shape[-1]})")
        want = ((u < torch.sigmoid(ell)).double() if latent.kind == "binary"
                else one_hot_argmax(ell + gumbel(u), latent.classes))
        if not torch.equal(family.sample(phi64, x64, u), want):
            _fail(name, "declares 'gumbel_noise' but sample(φ, x, u) is not 1[u < σ(ℓ)] / onehot(argmax(ℓ − log(−log u)))")
        rep.ok("gumbel_noise: sample is the Gumbel-max / threshold draw of its uniforms")
    if latent.kind in ("binary", "categorical") and "log_prob" in caps:
        states = _states(latent, torch.float64, x.device)  # [S, D]
        q = torch.exp(family.log_prob(phi64, x64, states.unsqueeze(1)))  # [S, N]
        total = q.sum(0)
        if not torch.allclose(total, torch.ones_like(total), rtol=0, atol=1e-10):
            _fail(name, f"q does not sum to 1 over the {states.shape[0]} latent states (sums {total.tolist()})")
        if "logits" in caps:
            ell = family.logits(phi64, x64)
            p1 = torch.sigmoid(ell) if latent.kind == "binary" else torch.softmax(
                ell.reshape(N, -1, latent.classes), -1).reshape(N, -1)
            if not torch.allclose((q.T @ states), p1, rtol=1e-10, atol=1e-12):
                _fail(name, "declares 'logits' but log_prob's marginals are not σ(ℓ) (binary) / softmax(ℓ_j) (categorical)")
            rep.ok("logits agree with log_prob")
        z = family.sample(phi64, x64, family.noise((R, N), make_generator(seed), torch.float64, x.device))
        idx = (z.unsqueeze(-2) == states).all(-1).double().argmax(-1)  # [R, N]: which state was drawn
        p = frequency_test(idx, q)
        rep.pvalues["sample_frequencies"] = p
        if p < alpha:
            _fail(name, f"samples do not follow log_prob: frequencies of {R} draws vs exact q, p = {p:.3g} < {alpha}")
        rep.ok(f"sampler agrees with log_prob (state frequencies, R = {R}, p = {p:.3g})")
    elif {"score", "log_prob"} <= caps:
        from gradbench.core import per_replicate_grad

        z = family.sample(phi64, x64, family.noise((R, N), make_generator(seed), torch.float64, x.device)).detach()
        g = per_replicate_grad(lambda ph, z1: family.log_prob(ph, x64, z1.unsqueeze(0)).sum(), phi64, z)
        flat = torch.cat([v.reshape(R, -1) for v in g.values()], 1)
        p = mean_test(flat, torch.zeros(flat.shape[1], dtype=torch.float64), seed=seed)
        rep.pvalues["score_identity"] = p
        if p < alpha:
            _fail(name, f"E_q ∇φ log q ≠ 0 (p = {p:.3g} < {alpha}): the sampler does not draw from log_prob's q")
        rep.ok(f"score identity E_q ∇φ log q = 0 (R = {R}, p = {p:.3g})")
    else:
        rep.skipped["sampler vs log q"] = ("neither a finite latent space with log_prob nor a declared score "
                                           "(implicit or non-differentiable q)")
    return rep


# -- models (built targets) ------------------------------------------------------------------------
def build(model: str, params: dict[str, Any] | None = None, proposal: dict[str, Any] | None = None, *,
          seed: int = 0, dtype: torch.dtype = torch.float64, device: str = "cpu") -> Any:
    """The registered model's target, built as a suite cell builds it."""
    entry = registry.MODELS[model]
    return entry.build(entry.params(**(params or {})), entry.proposal(**(proposal or {})), seed, dtype, device, None)


def _theta_reference_check(target: Any, rep: Report) -> None:
    """∇θ log p(x) against enumeration (discrete latents) or finite differences of ``model.log_marginal``."""
    model = getattr(target, "model", None)
    latent = getattr(model, "latent", None)
    try:
        ref = target.reference("theta").value.double()
    except ValueError:
        rep.skipped["theta reference"] = "the target has none"
        return
    if hasattr(target, "theta") and latent is not None and latent.kind in ("binary", "categorical") \
            and (latent.n_states() or 0) <= 2**12:
        states = _states(latent, torch.float64, target.x.device)
        x = target.x.double()

        def log_px(theta: dict[str, Tensor]) -> Tensor:
            return torch.logsumexp(model.log_joint(theta, x, states.unsqueeze(1)), 0).sum()

        theta = {k: v.double() for k, v in target.theta.items()}
        g = target.layout.flatten(torch.func.grad(log_px)(theta))
        if not torch.allclose(ref, g, rtol=1e-8, atol=1e-10 * (1 + float(g.abs().max()))):
            _fail(rep.name, f"reference('theta') differs from enumeration over {states.shape[0]} states by "
                            f"{float((ref - g).abs().max()):.3g}")
        rep.ok(f"theta reference = enumeration over {states.shape[0]} states")
    elif hasattr(target, "theta") and callable(getattr(model, "log_marginal", None)):
        theta = {k: v.double() for k, v in target.theta.items()}
        flat = target.layout.flatten(theta)
        x = target.x.double()

        def f(v: Tensor) -> float:
            return float(model.log_marginal(target.layout.unflatten(v), x))

        fd = torch.stack([torch.tensor((f(flat + FD_STEP * e) - f(flat - FD_STEP * e)) / (2 * FD_STEP), dtype=torch.float64)
                          for e in torch.eye(flat.numel(), dtype=torch.float64)])
        if not torch.allclose(ref, fd, rtol=FD_RTOL, atol=FD_RTOL * (1 + float(fd.abs().max()))):
            _fail(rep.name, f"reference('theta') differs from central finite differences of log_marginal by "
                            f"{float((ref - fd).abs().max()):.3g}")
        rep.ok("theta reference = central finite differences of model.log_marginal")
    else:
        rep.skipped["theta reference vs enumeration / finite differences"] = "continuous latents and no log_marginal"


def check_model(model: str, params: dict[str, Any] | None = None, proposal: dict[str, Any] | None = None, *,
                seed: int = 0, noise_checks: bool = True) -> Report:
    """A registered model: declared ``provides`` present on the built target (with their members), noise reuse and
    dtype in float64 and float32 runs, references float64 in both and the same up to float32 rounding, and ∇θ log p(x)
    against enumeration or finite differences where available."""
    rep = Report(model)
    entry = registry.MODELS[model]
    declared = entry.capabilities(proposal or {})
    t64 = build(model, params, proposal, seed=seed)
    t32 = build(model, params, proposal, seed=seed, dtype=torch.float32)
    have = frozenset(getattr(t64, "capabilities", ()))
    missing = sorted(declared - have)
    if missing:
        _fail(model, f"the registry declares {', '.join(missing)} but the built target does not have "
                     f"{'it' if len(missing) == 1 else 'them'} (target capabilities: {', '.join(sorted(have))})")
    composed = isinstance(t64, ComposedTarget)
    for cap in sorted(have):
        members = CAPABILITY_MEMBERS.get(cap, ()) if composed else TARGET_MEMBERS.get(cap, ())
        for owner, member in members:
            obj = t64 if owner == "target" else getattr(t64, owner, None)
            if obj is None or not _member(obj, member):
                _fail(model, f"declares {cap!r} but its {owner} has no {member}()")
    rep.ok("declared capabilities present on the built target, with their members")
    if noise_checks and hasattr(t64, "draw_noise"):
        for t, dtype in ((t64, torch.float64), (t32, torch.float32)):
            u1, u2 = t.draw_noise((2,), make_generator(seed)), t.draw_noise((2,), make_generator(seed))
            phi = t.encoder_params()
            z1, z2 = t.rsample(phi, u1), t.rsample(phi, u2)
            if not (torch.equal(u1, u2) and torch.equal(z1, z2)):
                _fail(model, f"{dtype}: the same seed does not give the same noise and sample")
            z, lq = t.sample_proposal((2,), make_generator(seed))
            lj = t.log_joint(z)
            if not (z.dtype == lq.dtype == lj.dtype == dtype):
                _fail(model, f"a {dtype} run returns z {z.dtype}, log q {lq.dtype}, log p {lj.dtype}")
        rep.ok("same seed → same noise → same sample; float32/float64 dtypes kept")
    for key in ("theta", "phi_elbo"):
        try:
            r64, r32 = t64.reference(key), t32.reference(key)
        except (ValueError, TypeError):
            continue
        for r, what in ((r64, "float64"), (r32, "float32")):
            if r.value.dtype != torch.float64:
                _fail(model, f"reference({key!r}) of a {what} run is {r.value.dtype}; references must be float64")
            if not bool(torch.isfinite(r.value).all()):
                _fail(model, f"reference({key!r}) of the {what} run is not finite")
        scale = 1 + float(r64.value.abs().max())
        if not torch.allclose(r32.value, r64.value, rtol=F32_RTOL, atol=F32_RTOL * scale):
            _fail(model, f"reference({key!r}) of the float32 run differs from float64's by "
                         f"{float((r32.value - r64.value).abs().max()):.3g}")
        rep.ok(f"reference({key!r}) float64 in float32 runs, equal up to rounding")
    _theta_reference_check(t64, rep)
    if "state_probabilities" in have:
        table = t64.state_probabilities()
        for k, v in table.items():
            if v.dtype != torch.float64 or bool(((v < 0) | (v > 1)).any()):
                _fail(model, f"state_probabilities()[{k!r}] must be float64 probabilities")
        rep.ok(f"state_probabilities: {', '.join(table)}")
    return rep


# -- estimators ------------------------------------------------------------------------------------
def _estimator(estimator: str | Callable[..., GradSample]) -> tuple[str, Callable[..., GradSample], Any]:
    if isinstance(estimator, str):
        entry = registry.ESTIMATORS[estimator]
        return estimator, entry.fn, entry
    return getattr(estimator, "__name__", "estimator"), estimator, None


def broken(sample: GradSample, scale: float = BROKEN_SE) -> GradSample:
    """The negative control: the same replicates shifted by ``scale`` standard errors of the mean per coordinate (a
    relative 1e-3 of the mean where a coordinate has no variance) — a bias the test must reject."""
    G = sample.grads
    F = G[torch.isfinite(G).all(1)].double()  # the rows the bias test uses
    se = F.std(0) / math.sqrt(F.shape[0])
    shift = torch.where(se > 0, scale * se, 1e-3 * (F.mean(0).abs() + 1e-3))
    return GradSample(G + shift.to(G.dtype), sample.layout, sample.cost, {}, wrt=sample.wrt)


def bias_pvalue(sample: GradSample, reference: Any, *, seed: int = 0, atoms: bool = False) -> float:
    """The ``bias`` protocol's p-value over all coordinates (reference noise included)."""
    from gradbench.protocols import ProtocolContext
    from gradbench.protocols.bias import bias

    ctx = ProtocolContext(seed=seed, eps=float(torch.finfo(sample.grads.dtype).eps), atoms=atoms)
    rows = [r for r in bias(sample, reference, ctx) if r["metric"] == "bias_pvalue" and r["param_group"] == "all"]
    return float(rows[0]["value"])


def check_estimator(estimator: str | Callable[..., GradSample], target: Any, params: dict[str, Any] | None = None, *,
                    R: int = 2000, seed: int = 0, unbiased: bool = False, alpha: float = ALPHA,
                    max_nonfinite: float = 0.01) -> Report:
    """An estimator on a target: requirements met, shapes/dtype/cost, ``wrt`` = its objective, same seed → same
    estimate, at most ``max_nonfinite`` of the replicates not finite (the runner drops and counts them); with
    ``unbiased`` the bias test passes (p > alpha) and :func:`broken` is rejected (p < alpha)."""
    name, fn, entry = _estimator(estimator)
    params = dict(params or {})
    rep = Report(name)
    if entry is not None:
        full = entry.params(**params).model_dump()
        missing = sorted(entry.required(full) - frozenset(getattr(target, "capabilities", ())))
        if missing:
            _fail(name, f"needs {', '.join(missing)}, which the target does not provide (validate refuses the pair)")
        objective = entry.objective(full).canonical()
    else:
        objective = None
    a = fn(target, R, make_generator(seed), **params)
    b = fn(target, min(R, 8), make_generator(seed), **params)
    if not isinstance(a, GradSample):
        _fail(name, f"returned {type(a).__name__}, not a GradSample")
    if objective is not None and a.wrt != objective.key:
        _fail(name, f"estimates {a.wrt!r} but is registered for {objective.key!r}")
    wrt = Objective.parse(a.wrt)
    size = (target.layout if wrt.wrt == "theta" else target.phi_layout).size
    if tuple(a.grads.shape) != (R, size):
        _fail(name, f"grads have shape {tuple(a.grads.shape)}, expected [R={R}, P={size}]")
    dtype = getattr(target, "dtype", a.grads.dtype)
    if a.grads.dtype != dtype:
        _fail(name, f"grads are {a.grads.dtype} on a {dtype} target")
    nonfinite = int((~torch.isfinite(a.grads)).any(1).sum())
    rep.pvalues["nonfinite_fraction"] = nonfinite / R
    if nonfinite > max_nonfinite * R:
        _fail(name, f"{nonfinite} of {R} replicates are not finite (more than {max_nonfinite:.0%}; the runner reports "
                    "and drops them)")
    if bool((a.cost < 0).any()):
        _fail(name, "cost must be a non-negative number of log-joint evaluations per replicate")
    c = fn(target, b.grads.shape[0], make_generator(seed), **params)
    if not torch.equal(b.grads, c.grads):
        _fail(name, "the same seed gives different estimates (all randomness must come from gen)")
    rep.ok("GradSample shape, dtype, finite, positive cost, wrt, same seed → same estimate")
    if unbiased:
        reference = target.reference(a.wrt)
        from gradbench.protocols.measure import has_atoms

        atoms = has_atoms(target)
        p = bias_pvalue(a, reference, seed=seed, atoms=atoms)
        rep.pvalues["bias"] = p
        if p < alpha:
            _fail(name, f"bias test rejects (p = {p:.3g} < {alpha}, R = {R}, seed {seed})")
        p_broken = bias_pvalue(broken(a), reference, seed=seed, atoms=atoms)
        rep.pvalues["negative_control"] = p_broken
        if p_broken >= alpha:
            _fail(name, f"negative control not rejected (p = {p_broken:.3g} ≥ {alpha}): the bias test has no power "
                        f"here (reference noise too large, or too few replicates)")
        rep.ok(f"unbiased: p = {p:.3g} > {alpha}; broken variant p = {p_broken:.3g} < {alpha}")
    return rep


__all__ = ["ALPHA", "BROKEN_SE", "ConformanceError", "Report", "bias_pvalue", "broken", "build", "check_estimator",
           "check_family", "check_model", "mean_test"]
