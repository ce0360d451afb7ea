"""The explicit registry of models, estimators and protocols.

Adding an estimator is one line in ``ESTIMATORS`` (after writing its file from
``estimators/_template.py``). Names are what suites use; descriptions are what
``gradbench list`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel

from gradbench.core import GradSample, Reference
from gradbench.estimators import importance, posterior, variational
from gradbench.models import ppca
from gradbench.protocols import ProtocolContext, Row
from gradbench.protocols.bias import bias
from gradbench.protocols.variance import variance


@dataclass(frozen=True)
class Model:
    name: str
    build: Callable[..., Any]  # (params, proposal, seed, dtype, device, data) -> target
    params: type[BaseModel]
    proposal: type[BaseModel]
    description: str


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[..., GradSample]  # (target, R, gen, **params) -> GradSample
    params: type[BaseModel]
    description: str
    wrt: str = "theta"


@dataclass(frozen=True)
class Protocol:
    name: str
    fn: Callable[[GradSample, Reference | None, ProtocolContext], list[Row]]
    description: str


def _build_ppca(
    params: ppca.PPCAParams,
    proposal: ppca.ProposalParams,
    seed: int,
    dtype: torch.dtype,
    device: str,
    data: np.ndarray | None = None,
) -> ppca.PPCA:
    return ppca.PPCA.synthetic(params, proposal, seed, dtype, device, data)


MODELS: dict[str, Model] = {m.name: m for m in [
    Model("ppca", _build_ppca, ppca.PPCAParams, ppca.ProposalParams,
          "probabilistic PCA: exact log-likelihood gradient, exact posterior, proposal with mismatch (δ, s)"),
]}

ESTIMATORS: dict[str, Estimator] = {e.name: e for e in [
    Estimator("exact", posterior.exact, posterior.ExactParams, "closed-form ∇θ log p(x) (zero variance; PPCA only)"),
    Estimator("oracle", posterior.oracle, posterior.OracleParams, "mean of ∇θ log p(x,z) over S exact-posterior samples (unbiased)"),
    Estimator("elbo", variational.elbo, variational.ELBOParams, "mean of ∇θ log p(x,z) over S samples from q (biased unless q = posterior)"),
    Estimator("iwae", importance.iwae, importance.IWAEParams, "self-normalised importance-weighted gradient, K samples (bias O(1/K))"),
]}

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("bias", bias, "bias_norm, rel_bias, bias_pvalue, bias_zmax against the reference gradient"),
    Protocol("variance", variance, "trace_cov, mean_var, snr_median, mse, evals_mean, work_norm_var"),
]}
