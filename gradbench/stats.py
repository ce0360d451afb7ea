"""Monte Carlo statistics with standard errors, in float64 numpy.

Standard errors of smooth functionals use the influence-function (delta-method) form
se = sd(ψ_r) / √n, where ψ_r is replicate r's influence on the statistic; medians use a
multinomial bootstrap driven by an explicit ``numpy.random.Generator``.

Bias tests (:func:`bias_test`) and the bias interval (:func:`bias_norm_interval`) share one
description of the noise of d = ḡ − g*: :class:`DiffNoise`, a root matrix L with LᵀL = Cov(d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

HOTELLING_N_BOOT = 499  # bootstrap draws of T² (each costs n r² flops; p resolution 1/500, refined by F below it)
HOTELLING_BOOT_MAX_FLOPS = 1e11  # above this B·n·r² (~10 s on one core), the Hotelling branch uses the F reference only
HOTELLING_MIN_RATIO = 10  # Hotelling T² only when its degrees of freedom ν ≥ 10 r (r: numerical rank)
N_BOOT = 1999  # multiplier-bootstrap draws of the max-type test (p-value resolution 1/2000)
ROUNDING_ULPS = 4.0  # a direction with s.d. below 4 eps × max|g| is rounding, not variance
DETERMINISTIC_ULPS = 64.0  # a mean difference in a zero-variance direction beyond this many ulps is a bias


def influence_se(psi: np.ndarray) -> float:
    """Standard error of a statistic whose per-replicate influence values are ``psi``."""
    n = psi.shape[0]
    return float(psi.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def accurate_mean(G: np.ndarray) -> np.ndarray:
    """Column means with one refinement step (numpy sums along axis 0 sequentially, with error
    ~ n eps max|g|; the correction makes the centred rows sum to zero up to rounding)."""
    mean = G.mean(0)
    return mean + (G - mean).mean(0)


@dataclass(frozen=True)
class ReferenceNoise:
    """The reference's uncertainty in float64 numpy (all ``None``: an exact reference).

    * ``cov`` [P, P] and ``n``: an estimated reference, the mean of n i.i.d. replicates whose sample
      covariance is ``cov`` (so Cov(g*) ≈ cov / n, estimated on n − 1 degrees of freedom);
    * ``var`` [P]: a per-coordinate variance: quadrature/enumeration error bounds, squared, treated as
      standard errors (deterministic, no off-diagonal part); or, with ``estimated_diagonal``, the squared
      standard errors of an estimated reference that kept no covariance (P above
      ``references.estimated.MAX_COV_DIM``): a Monte Carlo estimate whose covariance off the diagonal exists
      but is unknown. Whitening such a reference by its diagonal is wrong (T² ≈ Σ_k λ_k χ²₁, λ the eigenvalues
      of its correlation matrix), so :func:`bias_test` then never takes the Hotelling branch (docs/design.md §8.2).
    """

    cov: np.ndarray | None = None
    n: int | None = None
    var: np.ndarray | None = None
    estimated_diagonal: bool = False

    def sliced(self, sl: slice) -> ReferenceNoise:
        return ReferenceNoise(None if self.cov is None else self.cov[sl, sl], self.n,
                              None if self.var is None else self.var[sl], self.estimated_diagonal)

    @property
    def exact(self) -> bool:
        return self.cov is None and self.var is None


@dataclass(frozen=True)
class DiffNoise:
    """Cov(ḡ − g*) = Σ_i L_iᵀ L_i on its numerical support.

    ``parts`` are (L_i, df_i) with df_i the degrees of freedom of the estimate (n_i − 1; ∞ for a
    known variance). ``basis`` [r, P] and ``sv`` [r] are the right singular vectors and singular
    values of the stacked L (so Cov = basisᵀ diag(sv²) basis); ``floor`` is the s.d. below which a
    direction counts as zero-variance. ``diagonal_only`` is true when a part is the diagonal of an estimated
    reference whose off-diagonal covariance is unknown (:class:`ReferenceNoise` ``estimated_diagonal``): the
    root is then right on the diagonal of Cov only.
    """

    parts: tuple[tuple[np.ndarray, float], ...]
    basis: np.ndarray
    sv: np.ndarray
    floor: float
    diagonal_only: bool = False

    @property
    def rank(self) -> int:
        return int(self.sv.size)

    def whiten(self, diff: np.ndarray) -> np.ndarray:
        return (self.basis @ diff) / self.sv

    def welch_df(self) -> float:
        """ν of Nel & van der Merwe (1986): ν = (r + r²) / Σ_i [tr(A_i²) + tr(A_i)²] / df_i,
        A_i = the whitened covariance of part i (Σ_i A_i = I_r). One sample: ν = n − 1 (Hotelling), returned as
        such — the formula rounds it to just below n − 1, which at ν = HOTELLING_MIN_RATIO · r would take max-t."""
        if len(self.parts) == 1:
            return self.parts[0][1]
        r = self.rank
        denom = 0.0
        for L, df in self.parts:
            if not math.isfinite(df):
                continue
            B = (L @ self.basis.T) / self.sv  # [m_i, r], A_i = BᵀB
            A = B.T @ B
            denom += (float(np.sum(A * A)) + float(np.trace(A)) ** 2) / df
        return math.inf if denom == 0 else (r + r * r) / denom


def diff_noise(Xc: np.ndarray, ref: ReferenceNoise, eps: float, magnitude: float) -> DiffNoise:
    """Root of Cov(ḡ − g*) from centred replicates Xc [n, P] and the reference's noise.

    Numerical rank: singular values above max(s_max · max(m, P) · eps, ROUNDING_ULPS · eps · max|g|)
    where m is the number of stacked rows and max|g| = ``magnitude``, the largest replicate entry (the
    estimator's own rounding, on the scale of a mean: / √n). Neither scales with ‖g*‖, so a small bias in a low-variance direction stays visible.
    """
    n, P = Xc.shape
    parts: list[tuple[np.ndarray, float]] = [(Xc / math.sqrt(n * (n - 1)), float(n - 1))]
    mc_var = (Xc * Xc).sum(0) / (n * (n - 1))
    if ref.cov is not None and ref.n is not None:
        w, U = np.linalg.eigh(ref.cov / ref.n)
        keep = w > w.max(initial=0.0) * max(P, 1) * eps  # eigh's own rounding: √eps in s.d.
        parts.append(((U[:, keep] * np.sqrt(w[keep])).T, float(ref.n - 1)))
    # A known reference variance below 1e-6 of the Monte Carlo variance of the same coordinate changes no
    # standard error beyond its sixth digit (e.g. quadrature error bounds ~1e-8 relative): it is left out,
    # which keeps the decomposition at n rows instead of n + P.
    # An estimated reference's diagonal below that threshold everywhere bounds its off-diagonal part too
    # (|C_ij| ≤ √(C_ii C_jj)): the reference is then as good as exact and ``diagonal_only`` stays false.
    diagonal_only = False
    if ref.var is not None and ((ref.var > 0) & (ref.var > 1e-6 * mc_var)).any():
        idx = np.flatnonzero((ref.var > 0) & (ref.var > 1e-6 * mc_var))
        L = np.zeros((idx.size, P))
        L[np.arange(idx.size), idx] = np.sqrt(ref.var[idx])
        parts.append((L, math.inf))
        diagonal_only = ref.estimated_diagonal
    L_all = np.concatenate([L for L, _ in parts])
    _, s, Vt = np.linalg.svd(L_all, full_matrices=False)
    floor = max(float(s.max(initial=0.0)) * max(L_all.shape) * eps, ROUNDING_ULPS * eps * magnitude / math.sqrt(n))
    r = int((s > floor).sum())
    return DiffNoise(tuple(parts), Vt[:r], s[:r], floor, diagonal_only)


def sample_noise(G: np.ndarray, noise: ReferenceNoise | None, eps: float) -> DiffNoise:
    """:func:`diff_noise` of the replicates G [n, P]: what :func:`bias_test` and :func:`bias_norm_interval`
    both need; a caller running both on the same sample computes it once and passes it as ``dn``."""
    return diff_noise(G - accurate_mean(G), noise or ReferenceNoise(), eps, float(np.abs(G).max(initial=0.0)))


@dataclass(frozen=True)
class BiasTest:
    pvalue: float
    zmax: float
    method: str


def bias_test(G: np.ndarray, ref: np.ndarray, eps: float, rng: np.random.Generator,
              noise: ReferenceNoise | None = None, n_boot: int = N_BOOT, atoms: bool = False,
              dn: DiffNoise | None = None) -> BiasTest:
    """Test H0: E[G_r] = ref from n i.i.d. rows of G [n, p]; the reference may be noisy (``noise``).

    d = ḡ − g* has covariance V = Σ/n (+ the reference's: C/n_ref for an estimated reference with
    sample covariance C, a two-sample problem; + diag(error²) for quadrature/enumeration bounds).
    V is estimated through its root (:func:`diff_noise`), of numerical rank r. Decision rule:

    1. A component of d outside the support of V (a direction where neither the estimator nor the
       reference varies) larger than DETERMINISTIC_ULPS × eps × (max|g| + ‖g*‖_∞) · √p is a
       deterministic bias: p = 0 ("deterministic"). With ``atoms`` (estimators on discrete latent spaces,
       whose replicate gradients take finitely many values) an unsampled rare state is a second
       explanation: an off-support difference must then exceed the largest mean shift an unseen state
       of probability ≤ log(10³)/n could cause (the rule of three at 99.9 %), and a zero-variance
       coordinate alone is not a verdict.
    2. Hotelling when ν ≥ HOTELLING_MIN_RATIO · r, ν the Nel & van der Merwe (1986) degrees of
       freedom (= n − 1 for an exact reference), and V is known on its whole support — not when the
       n − 1 centred replicates are saturated with r > n − 1, nor for a diagonal-only estimated reference
       (``noise.estimated_diagonal``; see the comment in the body): T² = ‖V̂^{-½} d‖² on the rank-r support and
       T² · (ν − r + 1) / (ν r) ~ F(r, ν − r + 1). For an exact reference this is Hotelling's exact
       F(r, n − r); with a noisy reference it is the multivariate Behrens–Fisher approximation of
       Nel & van der Merwe, Commun. Statist. A 15 (1986), modified by Krishnamoorthy & Yu, Statist.
       Probab. Lett. 66 (2004). The rank r, not the nominal p, matters: PPCA-family gradients live in
       a rank-N·(k + k(k+1)/2) subspace whatever p is. The F reference is exact only for Gaussian
       rows; gradients are skewed and kurtotic (quadratic in the latents): on the wide PPCA oracle
       (r = 25, R = 300) it gave 2.3 % / 9.3 % false alarms at α = 1 % / 5 %. So T² is calibrated by
       the bootstrap (prepivoting, Beran, JASA 83, 1988): rows resampled, T²* recomputed with the
       resample's own covariance, the reference's noise added as Gaussian; p = (1 + #{T²* ≥ T²})/(B + 1)
       with B = HOTELLING_N_BOOT,
       refined by the F p-value when no draw reaches T² (as in 3.). Above HOTELLING_BOOT_MAX_FLOPS
       (B·n·r²) the F reference is used alone; ``method`` says which. T² spreads its power over r
       directions; a bias concentrated in a few coordinates (IWAE's, mostly in σ) is found sooner by
       max_j |t_j|: on the wide PPCA (r = 25, R = 300) IWAE K = 16 was detected in 67 % of targets by
       T² alone against 92 % by max-|z|. So the branch reports the min-p combination of T² and
       max-t, both from the same resamples and calibrated jointly (:func:`_hotelling_bootstrap`);
       the two separate p-values are in ``method``.
    3. Otherwise (R small relative to r, or V known only on its diagonal) a max-type test:
       T = max_j |d_j| / √V̂_jj calibrated by the
       empirical bootstrap-t of the maximum: rows resampled with replacement (multinomial counts),
       t*_j = (ḡ*_j − ḡ_j) / se*_j with each resample re-studentised, plus L_ref ξ (Gaussian ξ) for the
       reference's large-sample noise; T* = max_j |t*_j|. A diagonal-only estimated reference's noise is
       drawn independent across coordinates: each t_j keeps its exact variance, and when the reference's
       noise dominates, independence is the least favourable correlation for a maximum of centred Gaussians
       (Šidák, JASA 62, 1967), so the test is conservative there. Measured (P = 20, R = 200 > r, n_ref = 5000,
       reference correlation with tr R² = 114 against r = 20, 1000 cases): reference 120× the estimator's
       variance 0.5 % / 2.9 % false alarms at α = 1 % / 5 %, comparable variances 0.7 % / 4.6 %; the Hotelling
       branch it replaces gave 8.9 % / 14.0 % and 4.7 % / 10.2 %. The bootstrap of a maximum adapts to the
       correlation between coordinates (Chernozhukov, Chetverikov & Kato, Ann. Statist. 41, 2013, and
       "Central limit theorems and bootstrap in high dimensions", Ann. Probab. 45, 2017, whose
       empirical bootstrap this is); re-studentising gives the bootstrap-t its second-order
       accuracy under skewness (Hall, "The Bootstrap and Edgeworth Expansion", 1992). Measured at
       R = 30 on oracle PPCA gradients (chi-square-like, skewed), 300 targets: false alarms 0.3 % /
       4.7 % at α = 1 % / 5 % (KS p = 0.54), where Rademacher or Mammen multiplier weights gave 8 % /
       11 % at α = 1 % and Šidák on normal tails 3–4 %. Known limit (both bootstrap branches):
       heavy-tailed replicates (a heavy scale mixture, e.g. SUMO with truncation α = 0.8, tail index 8/3)
       make the row bootstrap over-disperse (resamples that miss the largest replicate) — the test is then
       conservative (300 targets: 0.0 % / 0.3 % at α = 1 % / 5 % at R = 30, 0.3 % / 2.3 % at R = 500), never
       anti-conservative; sign-flip (Rademacher) weights would fix that but are anti-conservative
       for skewed gradients at small R. SUMO with α = ½ (its default; Gaussian-type tail) is calibrated
       (gradbench.estimators.sumo; suites/calibration-sumo.yaml). p = (1 + #{T* ≥ T}) /
       (B + 1); when no draw reaches T the p-value is refined to min(1/(B+1), Bonferroni on t_{n−1}
       tails) so that multiple-testing corrections can rank very small p-values (decisions at any
       α ≥ 1/(B+1) are unchanged). ``rng`` drives the bootstrap (the caller seeds it).
    """
    n, p = G.shape
    noise = noise or ReferenceNoise()
    if n < 2:
        return BiasTest(math.nan, math.nan, "none: fewer than 2 replicates")
    mean = accurate_mean(G)
    diff = mean - ref
    Xc = G - mean
    magnitude = float(np.abs(G).max(initial=0.0))
    dn = dn or diff_noise(Xc, noise, eps, magnitude)
    var = sum((L**2).sum(0) for L, _ in dn.parts)  # diag V̂
    live = np.sqrt(var) > dn.floor
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(live, np.abs(diff) / np.sqrt(var), 0.0)
    zmax = float(z.max()) if p else 0.0
    tol = DETERMINISTIC_ULPS * eps * (magnitude + float(np.abs(ref).max(initial=0.0))) * math.sqrt(max(p, 1))
    r = dn.rank
    if np.abs(diff[~live]).max(initial=0.0) > tol and not atoms:
        return BiasTest(0.0, math.inf, "deterministic: bias in a zero-variance coordinate")
    # The support of V is known only when n replicates could have revealed more directions.
    saturated = np.linalg.matrix_rank(Xc, tol=dn.floor * math.sqrt(n * (n - 1))) >= n - 1
    outside = diff - dn.basis.T @ (dn.basis @ diff)
    # Discrete latents (``atoms``): a direction without sample variance may carry an unseen atom of probability
    # up to log(1/α₀)/n (α₀ = 1e-3, the rule of three's 99.9 % form); its effect on the mean is at most that
    # times the largest coordinate range. Below that bound an off-support difference is not a deterministic bias.
    unseen = 2 * math.log(1e3) / n * float((G.max(0) - G.min(0)).max(initial=0.0)) if atoms else 0.0
    if not saturated and np.linalg.norm(outside) > max(tol, unseen):
        return BiasTest(0.0, zmax, f"deterministic: bias outside the rank-{r} covariance support")
    if r == 0:
        return BiasTest(1.0, zmax, "zero variance")
    nu = dn.welch_df()
    two = ("" if noise.exact else ", two-sample" if noise.cov is not None
           else ", diagonal-only estimated ref" if noise.estimated_diagonal else ", known ref variance")
    # Hotelling needs Cov(d) on the whole rank-r support (docs/design.md §8.2). Two ways it is not known, max-t then:
    # (a) the estimator's n − 1 centred replicates are all independent (saturated) and r > n − 1: the reference's
    # noise supplies the other directions and the estimator's variance there is unobserved (taken as 0), T² is
    # inflated by ≈ tr(V_ref⁻¹Σ)/n while the Welch ν, which counts only the plug-in share, looks large;
    # (b) a diagonal-only estimated reference: its noise is correlated but only its diagonal is known, and whitening
    # by the diagonal gives T² ≈ Σ_k λ_k χ²₁ (λ: eigenvalues of its correlation matrix, variance 2 tr R² ≥ 2r).
    # Max-t needs only each coordinate's variance, which is known in both cases.
    estimator_unobserved = saturated and r > n - 1
    if nu >= HOTELLING_MIN_RATIO * r and not estimator_unobserved and not dn.diagonal_only:
        t2 = float(np.sum(dn.whiten(diff) ** 2))
        f = (nu - r + 1) * t2 / (nu * r)
        nu_txt = f"{nu:.0f}" if math.isfinite(nu) else "inf"
        p_f = float(sps.f.sf(f, r, nu - r + 1) if math.isfinite(nu) else sps.chi2.sf(t2, r))
        b_t2 = min(n_boot, HOTELLING_N_BOOT)
        if b_t2 * n * r * r > HOTELLING_BOOT_MAX_FLOPS:
            return BiasTest(p_f, zmax, f"hotelling(rank={r}, df={nu_txt}{two}, F)")
        p, p_t, p_m = _hotelling_bootstrap(Xc, diff, dn, t2, live, rng, b_t2, p_f)
        return BiasTest(p, zmax, f"hotelling+max-t(rank={r}, df={nu_txt}{two}, bootstrap B={b_t2}, "
                                 f"p_T2={p_t:.3g}, p_max={p_m:.3g})")
    return _max_t_bootstrap(Xc[:, live], diff[live], noise, live, rng, n_boot, zmax, r, two)


def _hotelling_bootstrap(Xc: np.ndarray, diff: np.ndarray, dn: DiffNoise, t2: float, live: np.ndarray,
                         rng: np.random.Generator, n_boot: int, p_f: float) -> tuple[float, float, float]:
    """(combined, T², max-t) bootstrap p-values from one set of resamples (see :func:`bias_test`).

    Rows resampled (multinomial counts c): m* = c Xc / n + Σ_i ξ_i L_i (Gaussian reference noise);
    T²* = m*ᵀ (S*/n + V_ref*)⁻¹ m* in the rank-r basis with the resample's own covariance S* and, for an
    estimated reference (sample covariance C on n_ref − 1 df), V_ref* = C*/n_ref with C* a Wishart draw around C
    (:func:`_wishart_draws`): the observed T² is studentised by an estimated C, so each draw is too; and
    M* = max_j |m*_j| / se*_j over the live coordinates (se*_j with the same C*). The combination is min-p
    (Westfall & Young 1993, §2; the "power enhancement" of a quadratic test by a max-type one, Fan, Liao &
    Yao, Econometrica 83, 2015): each statistic's p-value is its rank in its bootstrap law, and P = min(p_T², p_M)
    is calibrated by the law of P over the same resamples (:func:`_min_p_count`). The ranks are taken in the pool
    of the observed statistic and the B draws together, so that the observed and the draws are exchangeable under
    the bootstrap and p = (1 + #{draws at least as extreme}) / (B + 1) has level k/(B + 1) at k/(B + 1). (Ranking
    each draw within the draws only, the rule before wave 4, put a draw one rank step above the observed at the
    same value: P(p ≤ 1/(B + 1)) up to 2/(B + 1), and 1.07–1.18 % false alarms at α = 1 % for exchangeable
    statistics, B = 499 — studies/bias-test-calibration/encoder_prereg.md, minp_rule.py.) The marginal bootstrap p-values of
    T² and M are returned too (reported in ``method``)."""
    n = Xc.shape[0]
    Y = Xc @ dn.basis.T  # [n, r]
    Xl = Xc[:, live]
    s2 = (Xl**2).sum(0)
    L_parts = [L for L, _ in dn.parts[1:]]
    dfs = [df for _, df in dn.parts[1:]]
    roots = [L @ dn.basis.T for L in L_parts]
    r = Y.shape[1]
    # estimated parts (finite df): their covariance is itself an estimate; each draw re-estimates it
    V_known = sum((R.T @ R for R, df in zip(roots, dfs) if not math.isfinite(df)), np.zeros((r, r)))
    wishart = [(_sym_root(R.T @ R), df) for R, df in zip(roots, dfs) if math.isfinite(df)]
    ref_var = sum(((L[:, live] ** 2).sum(0) for L in L_parts), np.zeros(Xl.shape[1]))
    known_var = sum(((L[:, live] ** 2).sum(0) for L, df in zip(L_parts, dfs) if not math.isfinite(df)),
                    np.zeros(Xl.shape[1]))
    B_live = dn.basis[:, live]  # [r, m]: the live coordinates in the rank-r basis
    m_obs = float(np.max(np.abs(diff[live]) / np.sqrt(s2 / (n * (n - 1)) + ref_var)))
    # Σ_i c_i y_i y_iᵀ: one GEMM over the [n, r²] outer products when they fit in 64 MiB, else batched [r, n] @ [n, r]
    # products (same flops, memory b·n·r instead of n·r²)
    YY = (Y[:, :, None] * Y[:, None, :]).reshape(n, r * r) if n * r * r <= 1 << 23 else None
    T, M = [], []
    done = 0
    while done < n_boot:
        width = r * r if YY is not None else n * r
        b = min(n_boot - done, max(1, (1 << 24) // max(1, (width + Xl.shape[1]) * 8)))
        c = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        m = c @ Y / n
        mc = c @ Xl / n
        cyy = (c @ YY).reshape(b, r, r) if YY is not None else np.swapaxes(c[:, :, None] * Y, 1, 2) @ Y
        S = (cyy / n - m[:, :, None] * m[:, None, :]) / (n - 1)  # S*/n
        vc = (c @ Xl**2 / n - mc**2) / (n - 1)
        for L, R in zip(L_parts, roots):
            xi = rng.standard_normal((b, R.shape[0]))
            m = m + xi @ R
            mc = mc + xi @ L[:, live]
        if wishart:
            W = sum((_wishart_draws(A, df, b, rng) for A, df in wishart), np.zeros((b, r, r)))
            ref_var_b = known_var + np.einsum("ri,brs,si->bi", B_live, W, B_live)
        else:
            W, ref_var_b = np.zeros((1, r, r)), ref_var
        T.append(_quadratic_forms(np.broadcast_to(S + V_known + W, (b, r, r)), m))
        with np.errstate(divide="ignore", invalid="ignore"):
            M.append(np.nan_to_num(np.abs(mc) / np.sqrt(np.maximum(vc, 0.0) + ref_var_b), nan=np.inf).max(1))
        done += b
    Tb, Mb = np.concatenate(T), np.concatenate(M)
    B = Tb.size
    p_t = (1 + int((Tb >= t2).sum())) / (B + 1)
    p_m = (1 + int((Mb >= m_obs).sum())) / (B + 1)
    count = _min_p_count(t2, m_obs, Tb, Mb)
    p = (1 + count) / (B + 1)
    if count == 0:
        p = min(p, 2 * p_f)
    return p, p_t, p_m


def _min_p_count(t2: float, m_obs: float, Tb: np.ndarray, Mb: np.ndarray) -> int:
    """Number of bootstrap draws (T²*, M*) at least as extreme as the observed (t2, m_obs) in the min-p order.

    In the pool of the observed and the B draws, each member's p-values are its ranks from the top, #{pool ≥ T}
    and #{pool ≥ M} (ties counted as exceeding; NaN as +inf), and members are ordered by the smaller rank, ties
    broken by the larger one (lexicographic min-p: two members with the same smaller p are told apart by their other
    p). The ordering is a symmetric function of the pool, so under exchangeability the observed's position is
    uniform; the remaining ties (ranks (a, b) against (b, a)) count as reaching the observed (conservative).
    Measured on exchangeable normal statistics, B = 499, 2·10⁵ replications (studies/bias-test-calibration/minp_rule.py):
    P(p ≤ α) within 1.6 s.e. of α at α = 0.002, 0.01, 0.05, 0.1 for correlations 0, 0.5, 0.9 (the old rule:
    1.07–1.18 % at α = 1 %)."""
    def top_rank(v: np.ndarray) -> np.ndarray:
        v = np.where(np.isnan(v), np.inf, v)
        return v.size - np.searchsorted(np.sort(v), v, side="left")

    rt = top_rank(np.concatenate([[t2], Tb]))
    rm = top_rank(np.concatenate([[m_obs], Mb]))
    key = np.minimum(rt, rm).astype(np.int64) * (rt.size + 1) + np.maximum(rt, rm)
    return int((key[1:] <= key[0]).sum())


def _quadratic_forms(A: np.ndarray, m: np.ndarray) -> np.ndarray:
    """mᵢᵀ Aᵢ⁻¹ mᵢ for a batch A [b, r, r], m [b, r]; a singular Aᵢ (a resample that misses every row carrying some
    direction, e.g. a rare atom) gives +inf — that resample counts as exceeding (conservative) — without
    affecting the others."""
    out = np.full(A.shape[0], np.inf)
    sign, _ = np.linalg.slogdet(A)
    ok = sign != 0
    if ok.any():
        try:
            sol = np.linalg.solve(A[ok], m[ok][:, :, None])[:, :, 0]
            out[ok] = np.einsum("bi,bi->b", m[ok], sol)
        except np.linalg.LinAlgError:  # slogdet and solve's LU disagree (a rounding tie): one at a time, inf if singular
            for i in np.flatnonzero(ok):
                try:
                    out[i] = float(m[i] @ np.linalg.solve(A[i], m[i]))
                except np.linalg.LinAlgError:
                    pass
    return out


def _sym_root(V: np.ndarray) -> np.ndarray:
    """A with A Aᵀ = V for a symmetric positive semi-definite V (eigen-root; negative rounding clipped)."""
    w, U = np.linalg.eigh(V)
    return U * np.sqrt(np.clip(w, 0.0, None))


def _wishart_draws(A: np.ndarray, df: float, b: int, rng: np.random.Generator) -> np.ndarray:
    """b draws of V* = A W Aᵀ / df with W ~ Wishart(df, I_r) by Bartlett's decomposition W = T Tᵀ (T lower
    triangular, T_ii² ~ χ²(df − i), T_ij ~ N(0, 1) below the diagonal): the sampling law of a covariance
    estimated on df degrees of freedom whose truth is A Aᵀ (Bartlett 1933; e.g. Anderson, An Introduction to
    Multivariate Statistical Analysis, 3rd ed., §7.2)."""
    r = A.shape[0]
    T = np.tril(rng.standard_normal((b, r, r)), -1)
    idx = np.arange(r)
    T[:, idx, idx] = np.sqrt(rng.chisquare(df - idx, size=(b, r)))
    AT = A @ T  # [b, r, r]
    return AT @ AT.transpose(0, 2, 1) / df


def _max_t_bootstrap(Xc: np.ndarray, diff: np.ndarray, noise: ReferenceNoise, live: np.ndarray,
                     rng: np.random.Generator, n_boot: int, zmax: float, r: int, two: str) -> BiasTest:
    n, m = Xc.shape
    ref_var = np.zeros(m)
    ref_root = None
    if noise.cov is not None and noise.n is not None:
        C = noise.cov[np.ix_(live, live)] / noise.n
        ref_var = ref_var + np.diag(C)
        w, U = np.linalg.eigh(C)
        w = np.where(w > w.max(initial=0.0) * max(m, 1) * np.finfo(np.float64).eps, w, 0.0)
        ref_root = U * np.sqrt(w)  # C = ref_root ref_rootᵀ
    if noise.var is not None:
        ref_var = ref_var + noise.var[live]
    s2 = (Xc**2).sum(0)
    t_obs = float(np.max(np.abs(diff) / np.sqrt(s2 / (n * (n - 1)) + ref_var)))
    count = 0
    done = 0
    while done < n_boot:  # blocks bound the memory at ~ 64 MB
        b = min(n_boot - done, max(1, (1 << 23) // max(n, m)))
        c = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        mstar = c @ Xc / n  # ḡ* − ḡ (Xc is centred)
        vstar = (c @ Xc**2 / n - mstar**2) / (n - 1)  # s*²/n with s*² = n/(n−1) × resample variance
        if ref_root is not None:
            mstar = mstar + rng.standard_normal((b, ref_root.shape[1])) @ ref_root.T
        if noise.var is not None:
            mstar = mstar + rng.standard_normal((b, m)) * np.sqrt(noise.var[live])
        with np.errstate(divide="ignore", invalid="ignore"):
            tstar = np.abs(mstar) / np.sqrt(np.maximum(vstar, 0.0) + ref_var)
        count += int((np.nan_to_num(tstar, nan=np.inf).max(1) >= t_obs).sum())
        done += b
    pval = (1 + count) / (n_boot + 1)
    if count == 0:
        bonf = min(1.0, m * 2 * float(sps.t.sf(t_obs, n - 1)))
        pval = min(pval, bonf)
    return BiasTest(pval, zmax, f"max-t bootstrap(B={n_boot}, m={m}, rank={r}{two})")


RARE_STATE_COUNT = math.log(1e3)  # n·q below this: a value of probability q is absent from n draws with probability > 1e-3
INCONCLUSIVE = "inconclusive"  # prefix of a bias test's ``method`` when the rare-state rule applies


def rare_state_verdict(q_min: float | None, n: int) -> str:
    """``""`` when the bias test may give a verdict at n replicates, else why it may not ("inconclusive: …").

    ``q_min``: the smallest probability of a value that carries gradient coordinates — a value of a latent
    under q (score-function and relaxed estimators of discrete encoders) or of a sufficient statistic under
    p_θ (energy-based models); ``None`` when the target does not say (the rule does not apply). A value of
    probability q is absent from n i.i.d. draws with probability (1 − q)ⁿ ≈ e^{−nq}, above 10⁻³ when
    n·q < RARE_STATE_COUNT = log(10³). If it carries a large gradient (a score term ∝ 1/q, a rare state
    of an EBM), the sample mean misses its contribution while the sample variance does not show it, and
    every test that sees only the sample rejects unbiased estimators (measured: the bias-test calibration study, the discrete
    suites). No test can be calibrated there without more knowledge: two laws that differ by an atom of
    mass q give the same n draws with probability ≥ e^{−nq} (the impossibility of nonparametric tests of
    a mean, Bahadur & Savage, Ann. Math. Statist. 27, 1956). A bounded-range test (Hoeffding; empirical
    Bernstein, Maurer & Pontil, COLT 2009) would be valid where the target bounds its coordinates, but it
    is conservative at every n (its p-values are not uniform, so ``gradbench calibrate`` could not check
    it) and it powers down exactly the cells that are testable. Decision rule, therefore: when
    n·q_min < log(10³) the test is *inconclusive* at this n — its p-value is kept as a number, its
    ``method`` starts with ``inconclusive`` and says the n needed, ⌈log(10³)/q_min⌉, it is never
    reported as a bias and it is left out of the run's multiple-testing family
    (:func:`gradbench.protocols.bias.multiplicity_rows`). The condition depends on the target and n only,
    not on the sample, so the tests that remain keep their level (calibrated conditionally on it).
    """
    if q_min is None or not math.isfinite(q_min) or n * q_min >= RARE_STATE_COUNT:
        return ""
    return (f"{INCONCLUSIVE}: rare states, R·q_min = {n * q_min:.2g} < log(10³) (q_min = {q_min:.2g}), "
            f"need R ≥ {replicates_needed(q_min)}")


def replicates_needed(q_min: float) -> float:
    """The smallest R with R·q_min ≥ log(10³) (:func:`rare_state_verdict`); inf when q_min = 0."""
    return math.ceil(RARE_STATE_COUNT / q_min) if q_min > 0 else math.inf


@dataclass(frozen=True)
class BiasNorm:
    """‖b‖ for b = E[g_r] − g*: plug-in ‖d‖, unbiased ‖b‖² estimate and a confidence interval."""

    plugin: float
    sq_unbiased: float
    ci_low: float
    ci_high: float

    @property
    def signed_sqrt(self) -> float:
        return math.copysign(math.sqrt(abs(self.sq_unbiased)), self.sq_unbiased)


N_CI_DRAWS = 4000


def bias_norm_interval(G: np.ndarray, ref: np.ndarray, eps: float, rng: np.random.Generator,
                       noise: ReferenceNoise | None = None, level: float = 0.95,
                       dn: DiffNoise | None = None) -> BiasNorm:
    """Unbiased ‖b‖² and a ``level`` confidence interval for ‖b‖ (b = E[g_r] − g*).

    With d = ḡ − g* ≈ N(b, V): E‖d‖² = ‖b‖² + tr V, so ‖d‖² − tr V̂ is unbiased for ‖b‖² (tr V̂ =
    tr Σ̂/n + the reference's tr C/n_ref or Σ error²); it is negative about half the time when
    b = 0. The interval inverts the test of ‖b‖ = β based on ‖d‖² (Neyman construction): in V's
    eigenbasis ‖d‖² = Σ_i λ_i (z_i + δ_i)², whose law depends on the direction of b; its variance
    2 Σλ² + 4 bᵀVb is extreme when b lies along the largest or the smallest eigenvector, so β is
    accepted when the observed ‖d‖² lies between the (1∓level)/2 quantiles for *either* extreme
    direction (the union makes it conservative). Quantiles come from N_CI_DRAWS Gaussian draws
    (common to all β, from ``rng``), β by bisection. At b = 0 the lower end is 0 exactly when the
    ‖d‖² test does not reject at (1 − level)/2 — coverage holds at and near zero, unlike
    "‖d‖ ± s.e.". V̂ is plugged in (its own error is ignored: valid when R ≫ rank, the Hotelling
    regime; conservative-leaning otherwise because of the union). The upper end is computed at
    max(‖d‖², median of ‖d‖²'s law at b = 0): an observation smaller than is typical at b = 0 would
    otherwise give [0, 0] (the Neyman interval's known defect at a physical boundary; Feldman & Cousins,
    Phys. Rev. D 57 (1998), report the "sensitivity" instead); the upper end only grows, so coverage is
    kept. A component of d outside V's
    support is deterministic and enters as a fixed offset (unless n − 1 replicates saturate the
    rank, when the support is unknown and all of d is treated as noise). Reference: Neyman (1937); the
    generalised χ² of a Gaussian quadratic form, e.g. Imhof, Biometrika 48 (1961).
    """
    n = G.shape[0]
    noise = noise or ReferenceNoise()
    mean = accurate_mean(G)
    diff = mean - ref
    d2 = float(diff @ diff)
    if n < 2:  # no spread to estimate V from: the plug-in ‖d‖ alone
        return BiasNorm(math.sqrt(d2), math.nan, math.nan, math.nan)
    Xc = G - mean
    dn = dn or diff_noise(Xc, noise, eps, float(np.abs(G).max(initial=0.0)))
    lam = dn.sv**2
    sq = d2 - float(lam.sum())
    if dn.diagonal_only:
        lam = _worst_case_reference(dn)
    outside = diff - dn.basis.T @ (dn.basis @ diff)
    saturated = np.linalg.matrix_rank(Xc, tol=dn.floor * math.sqrt(n * (n - 1))) >= n - 1
    tol = DETERMINISTIC_ULPS * eps * (float(np.abs(G).max(initial=0.0)) + float(np.abs(ref).max(initial=0.0)))
    off = float(np.linalg.norm(outside))
    off2 = 0.0 if saturated or off <= tol * math.sqrt(max(G.shape[1], 1)) else off**2  # saturated: support unknown
    if lam.size == 0:
        return BiasNorm(math.sqrt(d2), sq, math.sqrt(d2), math.sqrt(d2))
    a = (1 - level) / 2
    Z = rng.standard_normal((N_CI_DRAWS, lam.size))
    Q = (Z**2) @ lam
    obs = d2 - off2  # the random part; the deterministic offset adds off2 to ‖b‖²
    obs_hi = max(obs, float(np.median(Q)))  # upper end never below the sensitivity (see docstring)
    lows, highs = [], []
    for k in {int(lam.argmax()), int(lam.argmin())}:
        rest = Q - lam[k] * Z[:, k] ** 2
        root = math.sqrt(lam[k]) * Z[:, k]

        def cdf(beta: float, o: float, rest: np.ndarray = rest, root: np.ndarray = root) -> float:
            return float(np.mean(rest + (root + beta) ** 2 <= o))

        hi_bracket = math.sqrt(obs_hi) + 10 * math.sqrt(float(lam.sum())) + 1e-300
        lows.append(0.0 if cdf(0.0, obs) <= 1 - a else _bisect(lambda b: cdf(b, obs) <= 1 - a, 0.0, hi_bracket))
        highs.append(_bisect(lambda b: cdf(b, obs_hi) < a, 0.0, hi_bracket))
    lo, hi = min(lows), max(highs)
    return BiasNorm(math.sqrt(d2), sq, math.sqrt(lo**2 + off2), math.sqrt(hi**2 + off2))


def _worst_case_reference(dn: DiffNoise) -> np.ndarray:
    """The eigenvalues of ‖d‖²'s law when the reference is known only by its diagonal (an estimated reference above
    ``MAX_COV_DIM``): the estimator's own (from its centred replicates) and the reference's share as **one**
    component carrying its whole trace tr C/n_ref.

    The reference adds Σ_k μ_k χ²₁ with Σ μ_k = tr C/n_ref known and the μ_k unknown (its correlations are not
    kept); treating it as independent coordinates (the diagonal) understates the upper tail when the coordinates
    are correlated (measured: the lower end of a 95 % interval above 0 in 8.5–9.5 % of b = 0 cases instead of 2.5 %).
    Concentrating the weight on one component gives the heaviest upper tail of a Gaussian quadratic form with a given
    trace at the tail probabilities used here (Székely & Bakirov, Probab. Theory Relat. Fields 126 (2003)), so the
    interval is conservative: wider, never anti-conservative."""
    est = np.linalg.svd(dn.parts[0][0], compute_uv=False) ** 2
    ref_trace = sum(float(np.sum(L * L)) for L, df in dn.parts[1:] if not math.isfinite(df))
    return np.concatenate([est[est > dn.floor**2], [ref_trace]])


def _bisect(pred, lo: float, hi: float, iters: int = 60) -> float:
    """Smallest x in [lo, hi] with pred(x) true, for a predicate monotone false → true."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


def hill_tail_index(x: np.ndarray) -> tuple[float, float, int]:
    """Hill (1975) estimate of the tail index α of positive data x (P(X > t) ∝ t^{−α}), its s.e., k.

    α̂ = 1 / [(1/k) Σ_{i ≤ k} log(x_(i) / x_(k+1))] over the k largest values x_(1) ≥ … ≥ x_(k+1);
    s.e. α̂ / √k (asymptotic normality for regularly varying tails, Hall 1982). k = ⌈√n⌉, a common
    fixed rule (bias/variance compromise; Hill, Ann. Statist. 3, 1975). Moments of order ≥ α are
    infinite: α ≤ 2 means an infinite variance. Light tails give large α̂ that grows with n.
    """
    x = np.sort(x[np.isfinite(x) & (x > 0)])[::-1]
    n = x.size
    k = math.ceil(math.sqrt(n))
    if n < 10 or k >= n:
        return math.nan, math.nan, k
    logs = np.log(x[:k]) - math.log(x[k])
    mean_log = float(logs.mean())
    if mean_log <= 0:
        return math.inf, math.nan, k
    alpha = 1.0 / mean_log
    return alpha, alpha / math.sqrt(k), k


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg (1995) adjusted p-values (q-values): q_(i) = min_{j ≥ i} m p_(j) / j.

    NaN p-values are not part of the family and get NaN."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(adj[::-1])[::-1])
    return q


def holm_adjust(p: np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values: p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    return out


def bootstrap_snr_medians(
    G: np.ndarray, groups: dict[str, slice], rng: np.random.Generator, n_boot: int = 200
) -> dict[str, tuple[float, float]]:
    """Median over coordinates of SNR_j = |mean_j| / sd_j per group, with bootstrap s.e.

    The bootstrap uses multinomial replicate counts, so each resample is two matrix products.
    """
    n = G.shape[0]

    def medians(mean: np.ndarray, var: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.abs(mean) / np.sqrt(np.maximum(var, 0.0))
        return {name: np.median(snr[..., sl], axis=-1) for name, sl in groups.items()}

    point = medians(G.mean(0), G.var(0, ddof=1))
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    center = G.mean(0)
    Gc = G - center  # centring first keeps the second moment numerically stable
    m1 = counts @ Gc / n
    var = (counts @ Gc**2 / n - m1**2) * n / (n - 1)
    boot = medians(m1 + center, var)
    out = {}
    for name in groups:
        finite = boot[name][np.isfinite(boot[name])]
        se = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        out[name] = (float(point[name]), se)
    return out
