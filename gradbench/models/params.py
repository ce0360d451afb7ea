"""Parameter schemas of the models and their proposals/encoders (torch-free; see
:mod:`gradbench.estimators.params` for why they live apart from the model code)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_ENUMERATED_LATENTS = 16  # sbn: 2^k states per data point are enumerated (gradbench.references.enumeration)
MAX_HIDDEN = 16  # rbm: Z enumerates 2^n_h hidden states
MAX_SPINS = 20  # ising: Z enumerates 2^n states
THETA_SEED_HELP = ("seeds the base parameters before scaling by weight_scale, so a weight_scale grid is a temperature "
                   "sweep of one model; None: the target's seed (which differs per weight_scale)")


class PPCAParams(BaseModel):
    """Suite parameters of a synthetic PPCA target."""

    model_config = ConfigDict(extra="forbid", strict=True)
    data_dim: int = Field(gt=0, description="d, dimension of x")
    latent_dim: int = Field(gt=0, description="k, dimension of z")
    n_data: int = Field(1, gt=0, description="N, number of data points (gradients are sums over them)")
    noise_std: float = Field(1.0, gt=0, description="σ, observation noise standard deviation")
    weight_scale: float = Field(1.0, gt=0, description="entries of W are N(0, weight_scale²)")


class ProposalParams(BaseModel):
    """Mismatch of the proposal q(z|x) relative to the exact posterior."""

    model_config = ConfigDict(extra="forbid", strict=True)
    mean_shift: float = Field(0.0, ge=0, description="δ, Mahalanobis length of the mean shift")
    cov_scale: float = Field(1.0, gt=0, description="s, multiplies the posterior covariance")


class PPCAEncoderParams(PPCAParams):
    """PPCA parameters plus the budget of the estimated IWAE_K references."""

    reference_replicates: int = Field(
        20_000, gt=1, description="replicates of the high-budget run behind the estimated IWAE_K references (K ≥ 2)")


class EncoderParams(BaseModel):
    """Perturbation of the amortised encoder away from the ELBO-optimal diagonal encoder."""

    model_config = ConfigDict(extra="forbid", strict=True)
    mean_noise: float = Field(0.0, ge=0, description="δ, size of the random perturbation of (A, b) in posterior sd")
    log_std_shift: float = Field(0.0, description="added to c = log std (0: optimal diagonal variances)")


class _StrictEBM(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class VAEParams(BaseModel):
    """Suite parameters of a ``vae`` target."""

    model_config = ConfigDict(extra="forbid", strict=True)
    latent_dim: int = Field(2, gt=0, description="k, dimension of z")
    data_dim: int | None = Field(None, gt=0, description="d, dimension of x (synthetic data); None: the data's width")
    n_data: int = Field(1, gt=0, description="N, synthetic data points (ignored when data is given)")
    hidden: list[int] = Field(default_factory=lambda: [16], description="decoder hidden widths (may be empty: linear)")
    activation: Literal["tanh", "softplus"] = Field("tanh", description="hidden-unit nonlinearity")
    likelihood: Literal["bernoulli", "gaussian"] = Field("bernoulli", description="x | z law")
    noise_std: float = Field(1.0, gt=0, description="gaussian likelihood: fixed σ (not learned, not in θ)")
    weight_scale: float = Field(1.0, gt=0, description="W_l entries ~ N(0, weight_scale²/fan_in)")
    bias_scale: float = Field(0.5, ge=0, description="b_l entries ~ N(0, bias_scale²)")
    quadrature_nodes: int | None = Field(None, ge=2, description="Gauss–Hermite nodes per axis (None: 100/64/24 for k=1/2/3)")
    reference_replicates: int = Field(20_000, gt=1, description="replicates behind estimated references (IWAE_K, k > 3)")


class GaussianProposal(BaseModel):
    """Which Gaussian family, and its mismatch relative to the Laplace approximation of the posterior."""

    model_config = ConfigDict(extra="forbid", strict=True)
    family: Literal["gaussian_mean_field", "gaussian_encoder"] = Field("gaussian_mean_field", description="q family")
    mean_shift: float = Field(0.0, ge=0, description="δ, Mahalanobis length of the mean shift (Laplace posterior)")
    log_std_shift: float = Field(0.0, description="added to the log standard deviations")
    encoder_hidden: list[int] = Field(default_factory=list, description="gaussian_encoder: tanh hidden widths ([]: linear)")
    fit_steps: int = Field(500, ge=0, description="gaussian_encoder with hidden layers: Adam steps of the fit")


class SBNParams(BaseModel):
    """Suite parameters of an ``sbn`` target."""

    model_config = ConfigDict(extra="forbid", strict=True)
    layers: list[int] = Field([10], description="latent widths bottom-up, [k1] or [k1, k2] (k2 is the top layer); k1 + k2 ≤ 16")
    conditionals: Literal["linear", "mlp"] = Field("linear", description="linear logits or a one-hidden-layer tanh MLP")
    hidden: int = Field(16, gt=0, description="hidden width of the MLP conditionals")
    data_dim: int | None = Field(None, gt=0, description="d for synthetic data (with given data: None or equal to its width)")
    n_data: int = Field(10, gt=0, description="N synthetic rows (ignored when data is given)")
    weight_scale: float = Field(2.0, gt=0, description="weights ~ N(0, weight_scale²/fan_in)")
    bias_scale: float = Field(1.0, ge=0, description="biases and prior logits ~ N(0, bias_scale²)")
    reference_replicates: int = Field(20_000, gt=1, description="replicates of the estimated IWAE_K references (K ≥ 2)")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if len(v) not in (1, 2) or min(v) < 1 or sum(v) > MAX_ENUMERATED_LATENTS:
            raise ValueError(f"layers must be [k1] or [k1, k2] with positive widths summing to ≤ {MAX_ENUMERATED_LATENTS}")
        return v


class BernoulliProposal(BaseModel):
    """The suite's ``proposal:`` block for a binary-latent model: which family and its mismatch."""

    model_config = ConfigDict(extra="forbid", strict=True)
    family: Literal["bernoulli_encoder", "bernoulli_mean_field"] = Field(
        "bernoulli_encoder", description="amortised encoder (linear or MLP) or free per-datapoint logits")
    hidden: int | None = Field(None, gt=0, description="encoder hidden width (tanh MLP); None: linear encoder")
    temperature: float = Field(1.0, gt=0, description="τ: fitted logits divided by τ (τ > 1 flattens q)")
    logit_shift: float = Field(0.0, description="added to every logit after the temperature")
    logit_noise: float = Field(0.0, ge=0, description="ε: s.d. of the Gaussian perturbation of the logits (average over data)")


class NoProposal(_StrictEBM):
    """EBM targets have no proposal: the estimators' chains start from the data."""


class RBMParams(_StrictEBM):
    n_visible: int = Field(8, gt=0, description="n_v visible units (64 for digits)")
    n_hidden: int = Field(4, gt=0, le=MAX_HIDDEN, description="n_h hidden units (Z enumerates 2^n_h states)")
    n_data: int = Field(10, gt=0, description="N data points (gradients are sums over them)")
    weight_scale: float = Field(1.0, gt=0, description="β: synthetic W, b, c ~ N(0, β²); digits W ~ N(0, β²)")
    data: Literal["synthetic", "digits"] = Field("synthetic", description="exact samples from the model, or binarised sklearn digits")
    binarize: Literal["threshold", "dynamic"] = Field("threshold", description="digits: pixel/16 > 0.5, or Bernoulli(pixel/16) from the seed")
    theta_seed: int | None = Field(None, ge=0, description=THETA_SEED_HELP)

    @model_validator(mode="after")
    def _check(self) -> RBMParams:
        if self.data == "digits" and self.n_visible != 64:
            raise ValueError(f"digits have 64 pixels: set n_visible: 64 (got {self.n_visible})")
        if self.data == "digits" and self.n_data > 1797:
            raise ValueError(f"digits has 1797 images (got n_data={self.n_data})")
        return self


class IsingParams(_StrictEBM):
    n_spins: int = Field(8, gt=1, le=MAX_SPINS, description="n spins ±1 (Z enumerates 2^n states)")
    n_data: int = Field(10, gt=0, description="N data points, exact samples from the model")
    weight_scale: float = Field(1.0, gt=0, description="β: J_ij ~ N(0, β²/n), h_i ~ N(0, (β·field_scale)²)")
    field_scale: float = Field(0.3, ge=0, description="field standard deviation at β = 1")
    theta_seed: int | None = Field(None, ge=0, description=THETA_SEED_HELP)


# -- Semi-implicit variational families (gradbench.families.semi_implicit) ---------------------------
class SemiImplicitProposal(BaseModel):
    """The semi-implicit q's shape and its starting point relative to a Gaussian posterior approximation
    N(m*_n, S_n) (PPCA: exact; VAE: Laplace): b = m* + δ L 1/√k, A = √s L[:, :m] + a_noise·G/√m, d = d0·√diag S."""

    model_config = ConfigDict(extra="forbid", strict=True)
    mixing_dim: int | None = Field(None, gt=0, description="m, dimension of the mixing noise ε (None: latent_dim)")
    hidden: int = Field(0, ge=0, description="shared tanh MLP width added to T(ε) (0: linear T, exact marginal)")
    mean_shift: float = Field(0.0, ge=0, description="δ, Mahalanobis length of the shift of b")
    cov_scale: float = Field(0.5, gt=0, description="s: A's columns are √s times the posterior's Cholesky factor")
    diag_scale: float = Field(0.7, gt=0, description="d0: conditional standard deviations d0·√diag S")
    a_noise: float = Field(0.3, ge=0, description="s.d. of the seeded Gaussian perturbation of A (times 1/√m)")
    mlp_scale: float = Field(0.5, ge=0, description="hidden > 0: scale of the MLP's output weights V")
    n_atoms: int = Field(0, ge=0, description="M > 0: ε uniform over M fixed atoms (q an exact Gaussian mixture)")
    atom_seed: int = Field(0, ge=0, description="seed of the atoms ε_j ~ N(0, I_m)")


class Toy2DParams(BaseModel):
    """The 2-D banana / X-shaped densities of the SIVI and UIVI papers (``gradbench.models.toy2d``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    density: Literal["banana", "x_shaped"] = Field("banana", description="banana: z₂|z₁ ~ N(c z₁², s₂²); x_shaped: ½/½ mixture")
    banana_scales: list[float] = Field([2.0, 1.0], min_length=2, max_length=2, description="(s₁, s₂)")
    banana_curvature: float = Field(0.25, description="c")
    x_var: float = Field(2.0, gt=0, description="v: the components' variances")
    x_cov: float = Field(1.8, description="r: ± the components' covariance (|r| < v)")
    quadrature_nodes: int | None = Field(None, ge=2, description="Gauss–Hermite nodes per axis (None: defaults)")
# -- Discrete latent variables (bernoulli_toy) ---------------------------------------
class BernoulliToyParams(BaseModel):
    """Suite parameters of the ``bernoulli_toy`` target: min_φ E_{b ~ Bern(σ(φ))} Σ_j (b_j − t)²."""

    model_config = ConfigDict(extra="forbid", strict=True)
    dim: int = Field(1, gt=0, le=16, description="D independent coordinates b_j ~ Bern(σ(φ_j))")
    t: float = Field(0.499, description="the target t of the loss (b − t)² (REBAR/RELAX: 0.499)")
    logit: float = Field(0.0, description="φ_j, the same for every coordinate (θ = 0: σ = ½)")
    logit_spread: float = Field(0.0, ge=0, description="φ_j = logit + logit_spread·(j/(D−1) − ½): distinct coordinates")


class BernoulliToyProposal(BaseModel):
    """The toy has no separate proposal: q is Bern(σ(φ)) itself (an empty ``proposal:`` block)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CategoricalVAEParams(BaseModel):
    """Suite parameters of a ``categorical_vae`` target: k categorical latents with C classes."""

    model_config = ConfigDict(extra="forbid", strict=True)
    latents: int = Field(2, gt=0, description="k categorical latents (Kool et al. 2020: 2)")
    classes: int = Field(10, ge=2, description="C classes per latent (Kool et al. 2020: 10); C^k ≤ 2^16 states")
    decoder: Literal["linear", "mlp"] = Field("linear", description="pixel logits linear in the one-hot z, or a tanh MLP")
    hidden: int = Field(32, gt=0, description="hidden width of the MLP decoder")
    data_dim: int | None = Field(None, gt=0, description="d for synthetic data (with given data: None or equal to its width)")
    n_data: int = Field(10, gt=0, description="N synthetic rows (ignored when data is given)")
    weight_scale: float = Field(2.0, gt=0, description="decoder weights ~ N(0, weight_scale²/fan_in)")
    bias_scale: float = Field(1.0, ge=0, description="biases and prior logits ~ N(0, bias_scale²)")
    reference_replicates: int = Field(20_000, gt=1, description="replicates of the estimated IWAE_K references (K ≥ 2)")

    @model_validator(mode="after")
    def _enumerable(self) -> CategoricalVAEParams:
        if self.classes**self.latents > 2**MAX_ENUMERATED_LATENTS:
            raise ValueError(f"C^k = {self.classes}^{self.latents} states exceed 2^{MAX_ENUMERATED_LATENTS} (enumeration)")
        return self


class CategoricalProposal(BaseModel):
    """The ``proposal:`` block of a categorical-latent model: the amortised softmax encoder and its mismatch."""

    model_config = ConfigDict(extra="forbid", strict=True)
    family: Literal["categorical_encoder"] = Field("categorical_encoder", description="amortised softmax logits (linear or MLP)")
    hidden: int | None = Field(None, gt=0, description="encoder hidden width (tanh MLP); None: linear encoder")
    temperature: float = Field(1.0, gt=0, description="τ: fitted logits divided by τ (τ > 1 flattens q)")
    logit_noise: float = Field(0.0, ge=0, description="ε: s.d. of the Gaussian perturbation of the logits (average over data)")
