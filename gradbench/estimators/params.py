"""Parameter schemas of the estimators: strict pydantic models, one per estimator family.

They live here, apart from the estimators' torch code, so that ``gradbench validate`` and
``gradbench list`` check and describe suites without importing torch (start-up well under a
second). Each family's module re-exports its classes (``importance.IWAEParams`` is this
``IWAEParams``). A new family may keep its params in its own file: it is then imported (with
torch) only when a suite uses it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ExactParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OracleParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(1, gt=0, description="exact-posterior samples per data point")


class ELBOParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(1, gt=0, description="proposal samples per data point")


class IWAEParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    K: int = Field(8, gt=0, description="importance samples per data point")


Coupling = Literal["maximal", "common_uniform", "independent"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SingleChainParams(_Strict):
    K: int = Field(8, ge=2, description="particles per state (per data point)")
    t: int = Field(1, ge=0, description="kernel steps from the IS state X_0; the estimate is h(X_t)")
    rao_blackwell: bool = Field(True, description="h = Σ_k w̃_k ∇ log p(x, z_k) (True) or ∇ log p(x, z_ℓ) (False)")


class CoupledParams(_Strict):
    K: int = Field(8, ge=2, description="particles per state (per data point)")
    k: int | Literal["auto"] = Field(0, description="first time averaged (seed: burn-in t0); 'auto': pilot τ quantile")
    m: int | Literal["auto"] | None = Field(
        None, description="last time averaged; None: k (the seed's form) for an int k, m_factor·k for k: auto")
    lag: int = Field(1, ge=1, description="lag L between the chains")
    rao_blackwell: bool = Field(True, description="h = Σ_k w̃_k ∇ log p(x, z_k) (True) or ∇ log p(x, z_ℓ) (False)")
    max_iter: int = Field(10_000, ge=1, description="cap on t; replicates not met by then are censored (NaN)")
    k_quantile: float = Field(0.95, gt=0, lt=1, description="k: auto → this quantile of pilot meeting times")
    m_factor: int = Field(5, ge=1, description="m = m_factor·k when m is auto (or None with k: auto)")
    pilot_replicates: int = Field(200, ge=1, description="pilot replicates for k: auto")

    @model_validator(mode="after")
    def _check(self) -> CoupledParams:
        if isinstance(self.k, int) and self.k < 0:
            raise ValueError("k must be ≥ 0")
        if isinstance(self.k, int) and isinstance(self.m, int) and self.m < self.k:
            raise ValueError(f"m must be ≥ k (got k={self.k}, m={self.m})")
        if isinstance(self.m, int) and self.m > self.max_iter:
            raise ValueError(f"m must be ≤ max_iter (got m={self.m}, max_iter={self.max_iter})")
        return self


class CoupledISIRParams(CoupledParams):
    coupling: Coupling = Field("maximal", description="index coupling: maximal, common_uniform or independent")


class CoupledPIMHParams(CoupledParams):
    pass


class SUMOParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    K_min: int = Field(1, ge=1, description="K0: particles always drawn (the IWAE_{K0} base)")
    truncation: Literal["geometric", "power"] = Field(
        "power", description="law of the number of terms 𝒦 (geometric: infinite gradient variance)")
    rho: float = Field(0.8, gt=0, lt=1, description="geometric: S(j) = rho^(j-1)")
    alpha: float = Field(0.5, gt=0, description="power: S(j) = j^(-alpha); finite variance iff alpha < 1, Gaussian-type tail (calibrated bias test) iff alpha <= 1/2")
    max_terms: int = Field(100_000, ge=1, description="a draw 𝒦 > max_terms censors the replicate")
    roulette: Literal["per_replicate", "per_point"] = Field(
        "per_replicate", description="one 𝒦 per replicate shared by its N data points (cost N·𝒦), or one per data point")


class ReparamELBOParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(1, gt=0, description="samples per data point")
    kl: Literal["mc", "analytic"] = Field("mc", description="KL(q‖p(z)) sampled (mc) or in closed form (analytic)")


class STLParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(1, gt=0, description="samples per data point")


class IWAEReparamParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    K: int = Field(8, gt=0, description="importance samples per data point")
    wrt: Literal["phi", "theta"] = Field("phi", description="gradient w.r.t. the encoder (phi) or the model (theta)")


class DReGParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    K: int = Field(8, gt=0, description="importance samples per data point")


STATELESS = ("none", "point", "optimal", "rloo")


STATEFUL = ("moving_average", "learned_constant", "learned_input")


BaselineName = Literal["none", "moving_average", "learned_constant", "learned_input", "point", "optimal", "rloo"]


KL = Literal["analytic", "mc"]


class ReinforceParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(1, gt=0, description="samples per data point")
    baseline: BaselineName = Field("none", description="control variate b (module docstring)")
    kl: KL = Field("analytic", description="f = log p(x|z) with analytic KL, or f = log w (mc)")
    warmup: int = Field(0, ge=0, description="fitting steps of a stateful baseline before the measured estimate")
    rate: float = Field(0.1, gt=0, lt=1, description="EMA weight / SGD step / forgetting rate of a stateful baseline")

    @model_validator(mode="after")
    def _check(self) -> ReinforceParams:
        if self.baseline in ("optimal", "rloo") and self.S < 2:
            raise ValueError(f"baseline {self.baseline!r} is leave-one-out: it needs S ≥ 2 (got S = {self.S})")
        if self.baseline in STATELESS and self.warmup != 0:
            raise ValueError(f"baseline {self.baseline!r} has no state to warm up: warmup must be 0 (got {self.warmup})")
        return self


class VIMCOParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    K: int = Field(8, ge=2, description="importance samples per data point (≥ 2: leave-one-out)")


EBMCoupling = Literal["maximal", "block_maximal"]


class _StrictEBM(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ExactSamplingParams(_StrictEBM):
    S: int = Field(1, gt=0, description="exact samples from p_θ per estimate")


class CDParams(_StrictEBM):
    k: int = Field(1, ge=1, description="Gibbs sweeps from each data point")


class PCDParams(_StrictEBM):
    S: int = Field(10, gt=0, description="persistent chains")
    k: int = Field(1, ge=1, description="Gibbs sweeps per call")
    age: int = Field(0, ge=0, description="sweeps the chains ran (from data points) before the measured call")


class CoupledGibbsParams(_StrictEBM):
    S: int = Field(1, gt=0, description="independent chain pairs averaged per estimate")
    k: int = Field(1, ge=0, description="first time averaged (the CD-k term)")
    m: int | None = Field(None, description="last time averaged; None: m = k")
    lag: int = Field(1, ge=1, description="lag L between the chains")
    max_iter: int = Field(10_000, ge=1, description="cap on t; replicates not met by then are censored (NaN)")
    coupling: EBMCoupling = Field("maximal", description="maximal (unit by unit, common uniforms) or block_maximal (RBM)")

    @model_validator(mode="after")
    def _check(self) -> CoupledGibbsParams:
        m = self.k if self.m is None else self.m
        if m < self.k:
            raise ValueError(f"m must be ≥ k (got k={self.k}, m={m})")
        if m > self.max_iter:
            raise ValueError(f"m must be ≤ max_iter (got m={m}, max_iter={self.max_iter})")
        return self


# -- Semi-implicit and MCMC-enriched families (gradbench.estimators.semi_implicit) -------------------
class SIVIParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(1, gt=0, description="samples z per data point")
    K: int = Field(10, ge=0, description="extra mixing draws ε^ℓ in the SIVI bound (0: q(z|ε⁰) taken as q(z))")


class UIVIParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(1, gt=0, description="samples z per data point")
    reverse: Literal["hmc", "exact", "marginal", "generating", "prior"] = Field(
        "hmc", description="ε′ ~ q(ε|z): HMC from ε⁰, exact (linear family), marginal (exact ∇_z log q: J = ∞), "
                           "ε⁰ itself or q(ε) (the last two: negative controls)")
    samples: int = Field(1, gt=0, description="J reverse draws averaged into ∇_z log q(z)")
    burn_in: int = Field(5, ge=0, description="HMC iterations before the first kept draw")
    leapfrog: int = Field(5, gt=0, description="leapfrog steps per HMC iteration")
    step_size: float = Field(0.3, gt=0, description="leapfrog step size h₀")
    step_jitter: float = Field(0.5, ge=0, lt=1, description="j: step size ~ U[h₀(1−j), h₀(1+j)] per chain and iteration")


class VCDParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(2, gt=0, description="samples z⁰ per data point (≥ 2 for the leave-one-out control variate)")
    t: int = Field(5, ge=0, description="HMC iterations on p(z|x) from z⁰")
    leapfrog: int = Field(5, gt=0, description="leapfrog steps per HMC iteration")
    step_size: float = Field(0.2, gt=0, description="leapfrog step size h₀")
    step_jitter: float = Field(0.5, ge=0, lt=1, description="j: step size ~ U[h₀(1−j), h₀(1+j)] per chain and iteration")
    control_variate: bool = Field(True, description="per-datapoint leave-one-out baseline in the score term")
    score_term: bool = Field(True, description="False drops E[(f(zᵗ) − b) ∇φ log q(z⁰)] (a negative control)")


class DensityRatioParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    S: int = Field(1, gt=0, description="samples z per data point")
    steps: int = Field(20, ge=0, description="damped Newton steps training each classifier (0: T = 0, q taken as the prior)")
    batch: int = Field(256, gt=0, description="fresh q- and prior-samples per class per training step")
# -- Discrete-latent estimators (gradbench.estimators.discrete) -----------------------
class ARMParams(_Strict):
    pass


class DisARMParams(_Strict):
    pass


class RLOOParams(_Strict):
    S: int = Field(2, ge=2, description="samples per data point (leave-one-out baseline needs S ≥ 2)")


class NVILParams(_Strict):
    warmup: int = Field(50, ge=0, description="baseline training steps before the measured estimate")
    rate: float = Field(0.05, gt=0, le=1, description="EMA rate of the running mean/variance and forgetting rate of the baseline fit")
    normalise: bool = Field(False, description="divide by max(1, running sd): a rescaled (biased) gradient, as in NVIL training")


class RelaxedParams(_Strict):
    tau: float = Field(0.5, gt=0, description="relaxation temperature τ of σ((ℓ − logit u)/τ)")


class REBARParams(_Strict):
    eta: float = Field(1.0, description="control-variate scale η (initial value when learned)")
    tau: float = Field(0.5, gt=0, description="temperature λ of the relaxation (initial value when learned)")
    warmup: int = Field(0, ge=0, description="Adam steps on (η, log λ) minimising the single-sample E‖ĝ_ℓ‖² (0: fixed)")
    lr: float = Field(0.01, gt=0, description="Adam step size of the warm-up")


class RELAXParams(_Strict):
    tau: float = Field(0.5, gt=0, description="initial temperature λ of the surrogate's relaxation")
    warmup: int = Field(50, ge=0, description="Adam steps on ψ = (η, log λ, w) minimising E‖ĝ_ℓ‖²")
    lr: float = Field(0.01, gt=0, description="Adam step size of the warm-up")


class WakeSleepParams(_Strict):
    S: int = Field(1, gt=0, description="(x̃, z) draws from p_θ per data point (sleep phase)")


class RWSParams(_Strict):
    K: int = Field(8, ge=1, description="importance samples per data point (wake-φ update)")
class SumAndSampleParams(_Strict):
    """The Rao–Blackwellised sum-and-sample estimator (Liu et al. 2019)."""

    m: int = Field(3, ge=1, description="states of largest q_φ(z | x_n) summed exactly (the rest is sampled once)")
    baseline: Literal["none", "summed"] = Field(
        "summed", description="summed: subtract β_n = Σ_{s∈C} q f / Σ_{s∈C} q, the q-mean of f over the summed states")
