"""Parameter schemas of the models and their proposals/encoders (torch-free; see
:mod:`gradbench.estimators.params` for why they live apart from the model code)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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

