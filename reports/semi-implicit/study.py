"""Issue 14 must-show numbers not produced by suites/semi-implicit.yaml (a few minutes on one thread):
exact-reference agreement, the SIVI bias-vs-K slope, VCD bias vs t against its exact t → ∞ limit, the mean-field
baseline's work-normalised variance on the digits VAE, the atom (Gaussian-mixture) and banana / X-shaped references
against finite differences and 10⁶ samples, and uivi's bias (with 95 % CI) and reverse-chain ESS vs HMC steps.

    PYTHONPATH=. OMP_NUM_THREADS=1 python reports/semi-implicit/study.py
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from gradbench.data import DataSpec, load
from gradbench.estimators.pathwise import reparam_elbo
from gradbench.estimators.semi_implicit import sivi, vcd
from gradbench.models import vae
from gradbench.models.params import GaussianProposal, PPCAParams, SemiImplicitProposal, VAEParams
from gradbench.models.semi_implicit import build_ppca, build_vae, ppca_elbo, ppca_vcd_limit_reference
from gradbench.references import quadrature
from gradbench.stats import ReferenceNoise, bias_test

warnings.simplefilter("ignore")
EPS = float(np.finfo(np.float64).eps)
PROPOSAL = SemiImplicitProposal(mixing_dim=3, mean_shift=0.5)
VAE_DIGITS = VAEParams(latent_dim=2, hidden=[32], activation="tanh", likelihood="bernoulli")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel(a, b) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def fd(fn, t, h=1e-5):
    flat = t.phi_layout.flatten(t.phi)
    out = torch.empty_like(flat)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        out[i] = (fn(t.phi_layout.unflatten(flat + e)) - fn(t.phi_layout.unflatten(flat - e))) / (2 * h)
    return out


def slope_with_se(Ks, b, se):
    """Weighted least squares of log b on log K (s.e. of log b = s.e.(b)/b): slope and its s.e."""
    x, y, w = np.log(Ks), np.log(b), (np.asarray(b) / np.asarray(se)) ** 2
    xm = (w * x).sum() / w.sum()
    sxx = (w * (x - xm) ** 2).sum()
    return float((w * (x - xm) * y).sum() / sxx), float(1 / math.sqrt(sxx))


def main() -> None:
    ppca = build_ppca(PPCAParams(data_dim=5, latent_dim=2, n_data=3), PROPOSAL, 0)
    digits, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
    vae_si = build_vae(VAE_DIGITS, PROPOSAL, 0, data=digits)
    small_vae = build_vae(VAEParams(latent_dim=2, data_dim=6, n_data=3, hidden=[5]), PROPOSAL, 0)

    print("== 1. exact references ==")
    ref = ppca.reference("phi_elbo").value
    print(f"PPCA closed form vs central differences (h=1e-5): rel {rel(ref, fd(lambda p: ppca_elbo(ppca.family, ppca.theta, ppca.x, p), ppca)):.2e}")
    q = quadrature.quadrature_elbo(ppca.model, ppca.family.marginal_view(), ppca.theta, ppca.phi, ppca.x, nodes=8)
    print(f"PPCA closed form vs Gauss–Hermite (16 nodes/axis): rel {rel(q.grad[ppca.model.layout.size:], ref):.2e}")
    g = gen()  # one generator: ten independent batches of 10^5
    G = torch.cat([reparam_elbo(ppca, 100_000, g).grads for _ in range(10)]).numpy()
    z = np.abs(G.mean(0) - ref.numpy()) / (G.std(0, ddof=1) / math.sqrt(G.shape[0]))
    bt = bias_test(G, ref.numpy(), EPS, np.random.default_rng(0))
    print(f"PPCA closed form vs 10^6 reparam samples: max|z| = {z.max():.2f} over {z.size} coords, p = {bt.pvalue:.3f} ({bt.method})")
    P = small_vae.model.layout.size
    q = quadrature.quadrature_elbo(small_vae.model, small_vae.family.marginal_view(), small_vae.theta, small_vae.phi,
                                   small_vae.x, nodes=64)
    f = fd(lambda p: quadrature.elbo_rule(small_vae.model, small_vae.family.marginal_view(), small_vae.theta, p,
                                          small_vae.x, 128)[0], small_vae)
    print(f"small VAE quadrature vs central differences: rel {rel(q.grad[P:], f):.2e} (doubling error {float(q.grad_error[P:].norm() / q.grad[P:].norm()):.1e})")
    r = vae_si.reference("phi_elbo")
    print(f"digits VAE quadrature reference: doubling error / norm = {float(r.error.norm() / r.value.norm()):.1e}")

    print("== 2. SIVI bias vs K (projection on the K = 1 bias direction, R = 4000 per K, seed 0) ==")
    for name, t in [("ppca", ppca), ("vae-digits", vae_si)]:
        g = gen()
        ref = t.reference("phi_elbo").value
        u = sivi(t, 4000, g, K=1).grads.mean(0) - ref
        u = u / u.norm()
        Ks, b, se = [1, 2, 4, 8, 16, 32, 64], [], []
        for K in Ks:
            proj = (sivi(t, 4000, g, K=K).grads - ref) @ u
            b.append(float(proj.mean()))
            se.append(float(proj.std() / math.sqrt(proj.numel())))
        s, s_se = slope_with_se(Ks, b, se)
        print(f"{name}: bias·u = " + ", ".join(f"K={K}: {bb:.3g}±{ss:.2g}" for K, bb, ss in zip(Ks, b, se)))
        s2, s2_se = slope_with_se(Ks[3:], b[3:], se[3:])
        print(f"{name}: slope of log bias on log K = {s:.3f} ± {s_se:.3f} (all K); {s2:.3f} ± {s2_se:.3f} (K ≥ 8)")

    print("== 3. VCD vs its exact t → ∞ limit on PPCA (R = 2000, seed 0) ==")
    limit = ppca_vcd_limit_reference(ppca)
    elbo = ppca.reference("phi_elbo")
    print(f"‖limit − ∇ELBO‖/‖∇ELBO‖ = {rel(limit.value, elbo.value):.3f}")
    for t_ in [0, 1, 2, 5, 10, 20]:
        for score in (True, False):
            gs = vcd(ppca, 2000, gen(), t=t_, score_term=score)
            G = gs.grads
            d = G.mean(0) - limit.value
            rb = float(d.norm() / limit.value.norm())
            p = bias_test(G.numpy(), limit.value.numpy(), EPS, np.random.default_rng(0)).pvalue
            tr = float(G.var(0).sum())
            print(f"t={t_:2d} score_term={score!s:5}: rel bias {rb:.3f} (noise floor ≈ {math.sqrt(tr / 2000) / float(limit.value.norm()):.3f}), "
                  f"p = {p:.2g}, acceptance {float(gs.diagnostics['acceptance'].nanmean()):.3f}, evals {float(gs.cost[0]):.0f}")

    print("== 4. mean-field reparameterisation on the same digits VAE (θ, data as vae_semi_implicit; its own φ) ==")
    mf = vae.build(VAE_DIGITS, GaussianProposal(family="gaussian_mean_field", mean_shift=0.5), 0, data=digits)
    for kl in ("mc", "analytic"):
        gs = reparam_elbo(mf, 1000, gen(), kl=kl)
        G = gs.grads
        tr = float(G.var(0).sum())
        # s.e. of tr Σ̂ from the per-replicate squared deviations
        dev2 = ((G - G.mean(0)) ** 2).sum(1)
        print(f"mean-field reparam_elbo kl={kl}: tr Σ = {tr:.4g} ± {float(dev2.std() / math.sqrt(1000)):.2g}, evals {float(gs.cost[0]):.0f}, "
              f"work_norm_var = {tr * float(gs.cost[0]):.4g}; p vs quadrature = {bias_test(G.numpy(), mf.reference('phi_elbo').value.numpy(), EPS, np.random.default_rng(0), ReferenceNoise(var=mf.reference('phi_elbo').error.numpy() ** 2)).pvalue:.2f}")

    section_5_atoms_and_toy_references()
    section_6_uivi_hmc_steps()
    section_7_mean_field_on_toy_targets()


def million_sample_check(name: str, t, fd_value) -> None:
    """Reference vs central differences of its own rule (float64) and vs 10⁶ reparameterised gradients (seed 0)."""
    ref = t.reference("phi_elbo")
    err = float(ref.error.norm() / ref.value.norm()) if ref.error is not None else 0.0
    f = fd(fd_value, t)
    g = gen()
    G = torch.cat([reparam_elbo(t, 100_000, g).grads for _ in range(10)]).numpy()
    noise = ReferenceNoise(var=ref.error.numpy() ** 2) if ref.error is not None else None
    bt = bias_test(G, ref.value.numpy(), EPS, np.random.default_rng(0), noise)
    z = np.abs(G.mean(0) - ref.value.numpy()) / (G.std(0, ddof=1) / math.sqrt(G.shape[0]))
    print(f"{name}: vs central differences rel {rel(ref.value, f):.2e}; doubling error {err:.1e}; vs 10^6 samples "
          f"max|z| = {z.max():.2f} over {z.size} coords, p = {bt.pvalue:.3f} ({bt.method})")


def section_5_atoms_and_toy_references() -> None:
    from gradbench.models.params import Toy2DParams
    from gradbench.models.toy2d import box_half_width, build

    print("== 5. atoms (exact Gaussian mixture) and banana / X-shaped references (10^6 samples, seed 0) ==")
    for hidden in (0, 4):
        prop = PROPOSAL.model_copy(update={"n_atoms": 5, "hidden": hidden})
        t = build_ppca(PPCAParams(data_dim=5, latent_dim=2, n_data=3), prop, 0)
        million_sample_check(f"PPCA, 5 atoms, hidden {hidden}", t, lambda p, t=t: quadrature.mixture_elbo_rule(
            t.model, t.family, t.theta, p, t.x, 128)[0])
    for density in ("banana", "x_shaped"):
        for atoms in (0, 10):
            t = build(Toy2DParams(density=density), PROPOSAL.model_copy(update={"n_atoms": atoms}), 0)
            if density == "x_shaped":
                W = box_half_width(t.family, t.phi)
                value = lambda p, t=t, W=W: quadrature.box_elbo_rule(t.model, t.family, t.theta, p, t.x, 6,
                                                                     half_width=W, panel=0.25)[0]
            elif atoms:
                value = lambda p, t=t: quadrature.mixture_elbo_rule(t.model, t.family, t.theta, p, t.x, 128)[0]
            else:
                value = lambda p, t=t: quadrature.elbo_rule(t.model, t.family.marginal_view(), t.theta, p, t.x, 256)[0]
            million_sample_check(f"{density}, {f'{atoms} atoms' if atoms else 'Gaussian ε'}", t, value)


def section_6_uivi_hmc_steps() -> None:
    from gradbench.estimators.semi_implicit import uivi
    from gradbench.models.params import Toy2DParams
    from gradbench.models.toy2d import build
    from gradbench.stats import bias_norm_interval

    print("== 6. uivi: exact reverse vs HMC burn-in (R = 4000, seed 0): rel bias [95 % CI], p, acceptance, ESS ==")
    targets = [("ppca", build_ppca(PPCAParams(data_dim=5, latent_dim=2, n_data=3), PROPOSAL, 0)),
               ("banana", build(Toy2DParams(density="banana"), PROPOSAL, 0)),
               ("banana, 5 atoms", build(Toy2DParams(density="banana"), PROPOSAL.model_copy(update={"n_atoms": 5}), 0))]
    for name, t in targets:
        ref = t.reference("phi_elbo")
        noise = ReferenceNoise(var=ref.error.numpy() ** 2) if ref.error is not None else None
        settings = [("exact", {"reverse": "exact"}), ("generating", {"reverse": "generating"})]
        if "atoms" not in name:
            settings += [(f"hmc burn_in={b}", {"reverse": "hmc", "burn_in": b}) for b in (0, 1, 2, 5, 10, 20)]
        for label, kw in settings:
            gs = uivi(t, 4000, gen(), **kw)
            G = gs.grads.numpy()
            norm = float(ref.value.norm())
            bn = bias_norm_interval(G, ref.value.numpy(), EPS, np.random.default_rng(0), noise)
            p = bias_test(G, ref.value.numpy(), EPS, np.random.default_rng(0), noise).pvalue
            acc, ess = gs.diagnostics["acceptance"], gs.diagnostics["ess"]
            extra = "" if not torch.isfinite(acc).any() else (
                f", acceptance {float(acc.mean()):.3f}, ESS {float(ess.mean()):.2f} ± {float(ess.std() / math.sqrt(4000)):.2f}"
                f" of {int(kw['burn_in']) + 2} states")
            print(f"{name} {label}: rel bias {bn.plugin / norm:.3f} [{bn.ci_low / norm:.3f}, {bn.ci_high / norm:.3f}], "
                  f"p = {p:.2g}, evals {float(gs.cost[0]):.0f}{extra}")



def section_7_mean_field_on_toy_targets() -> None:
    """Mean-field Gaussian q (GaussianMeanField, its own φ: the posterior's / moment-matched N(m, diag S) shifted like
    the semi-implicit b) on PPCA (Gauss–Hermite: exact) and on the banana and X-shaped densities (z-space box rule),
    reparam_elbo with R = 1000 (as the suite)."""
    from gradbench.contracts import ComposedTarget
    from gradbench.families.gaussian import GaussianMeanField
    from gradbench.models.params import Toy2DParams
    from gradbench.models.toy2d import build

    print("== 7. mean-field reparameterisation on PPCA and the banana / X-shaped densities (R = 1000, seed 0) ==")
    ppca = build_ppca(PPCAParams(data_dim=5, latent_dim=2, n_data=3), PROPOSAL, 0)
    from gradbench.models.semi_implicit import ppca_posterior

    m_post, S = ppca_posterior(ppca.theta, ppca.x)
    sd = torch.sqrt(torch.diagonal(S)).expand_as(m_post)
    phi = {"m": m_post + 0.5 * sd / math.sqrt(2), "log_s": torch.log(sd)}
    t = ComposedTarget(ppca.model, GaussianMeanField(2, 3), ppca.x, ppca.theta, phi)
    res = quadrature.quadrature_elbo(t.model, t.family, t.theta, t.phi, t.x, 8)  # exact: quadratic log p, Gaussian q
    report_mean_field("ppca", t, res)
    for density in ("banana", "x_shaped"):
        si = build(Toy2DParams(density=density), PROPOSAL, 0)
        mean, cov = si.model.moments(si.theta)
        sd = torch.sqrt(torch.diagonal(cov))
        phi = {"m": (mean + 0.5 * sd / math.sqrt(2)).unsqueeze(0), "log_s": torch.log(sd).unsqueeze(0)}
        t = ComposedTarget(si.model, GaussianMeanField(2, 1), si.x, si.theta, phi)
        res = quadrature.quadrature_box_elbo(t.model, t.family, t.theta, t.phi, t.x, 6,
                                             half_width=0.25 * math.ceil(4 * float(phi["m"].abs().max() + 10 * sd.max())))
        report_mean_field(density, t, res)


def report_mean_field(name: str, t, res) -> None:
    ref = res.grad[t.model.layout.size:]
    gs = reparam_elbo(t, 1000, gen())
    G = gs.grads
    tr = float(G.var(0).sum())
    dev2 = ((G - G.mean(0)) ** 2).sum(1)
    p = bias_test(G.numpy(), ref.numpy(), EPS, np.random.default_rng(0)).pvalue
    print(f"{name}: mean-field reparam_elbo tr Σ = {tr:.4g} ± {float(dev2.std() / math.sqrt(1000)):.2g}, evals "
          f"{float(gs.cost[0]):.0f}, work_norm_var = {tr * float(gs.cost[0]):.4g}; p vs quadrature = {p:.2f} "
          f"(rule doubling error {float(res.grad_error[t.model.layout.size:].norm() / ref.norm()):.1e})")


if __name__ == "__main__":
    main()
