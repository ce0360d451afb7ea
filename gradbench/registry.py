"""The explicit registry of models, estimators and protocols.

Adding an estimator is one line in ``ESTIMATORS`` (after writing its file from
``estimators/_template.py``). Names are what suites use; descriptions are what
``gradbench list`` prints. Code is named by ``"module:attr"`` path and imported on first use
(``entry.fn`` / ``entry.build`` return the callable); parameter schemas are torch-free
(``estimators/params.py``, ``models/params.py``), so ``list`` and ``validate`` never import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from gradbench.estimators import params as ep
from gradbench.models import params as mp

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gradbench.core import GradSample, Reference
    from gradbench.protocols import ProtocolContext, Row


def resolve(impl: str | Callable[..., Any]) -> Callable[..., Any]:
    """The callable named ``"package.module:attr.attr"``, imported on first use, or ``impl`` itself.

    Entries name their code by path so that importing the registry (``gradbench list``,
    ``gradbench validate``) does not import torch: only the parameter schemas are loaded eagerly.
    """
    if not isinstance(impl, str):
        return impl
    module, _, attr = impl.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class _CodeByPath:
    """Fields named in ``_CODE`` may hold a ``"module:attr"`` path: reading them imports it."""

    _CODE = ("fn", "build")

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        return resolve(value) if name in _CodeByPath._CODE and isinstance(value, str) else value


@dataclass(frozen=True)
class Model(_CodeByPath):
    name: str
    build: Callable[..., Any]  # (params, proposal, seed, dtype, device, data) -> target; or its "module:attr"
    params: type[BaseModel]
    proposal: type[BaseModel]
    description: str


@dataclass(frozen=True)
class Estimator(_CodeByPath):
    name: str
    fn: Callable[..., GradSample]  # (target, R, gen, **params) -> GradSample; or its "module:attr"
    params: type[BaseModel]
    description: str
    wrt: str = "theta"


@dataclass(frozen=True)
class Protocol(_CodeByPath):
    name: str
    fn: Callable[[GradSample, Reference | None, ProtocolContext], list[Row]]  # or its "module:attr"
    description: str
    uses_reference: bool = True  # False: the runner need not compute (or estimate) a reference for it


def _build_ppca(
    params: mp.PPCAParams,
    proposal: mp.ProposalParams,
    seed: int,
    dtype: torch.dtype,
    device: str,
    data: np.ndarray | None = None,
) -> Any:
    from gradbench.models import ppca

    return ppca.PPCA.synthetic(params, proposal, seed, dtype, device, data)


MODELS: dict[str, Model] = {m.name: m for m in [
    Model("ppca", _build_ppca, mp.PPCAParams, mp.ProposalParams,
          "probabilistic PCA: exact log-likelihood gradient, exact posterior, proposal with mismatch (δ, s)"),
    Model("ppca_encoder", "gradbench.models.ppca_encoder:PPCAEncoder.synthetic", mp.PPCAEncoderParams, mp.EncoderParams,
          "PPCA with a linear-Gaussian encoder q_φ(z|x) = N(Ax+b, diag e^{2c}): exact ∇θ/∇φ ELBO; IWAE_K references estimated"),
]}

ESTIMATORS: dict[str, Estimator] = {e.name: e for e in [
    Estimator("exact", "gradbench.estimators.posterior:exact", ep.ExactParams, "closed-form ∇θ log p(x) (zero variance; PPCA only)"),
    Estimator("oracle", "gradbench.estimators.posterior:oracle", ep.OracleParams, "mean of ∇θ log p(x,z) over S exact-posterior samples (unbiased)"),
    Estimator("elbo", "gradbench.estimators.variational:elbo", ep.ELBOParams, "mean of ∇θ log p(x,z) over S samples from q (biased unless q = posterior)"),
    Estimator("iwae", "gradbench.estimators.importance:iwae", ep.IWAEParams, "self-normalised importance-weighted gradient, K samples (bias O(1/K))"),
    Estimator("pimh", "gradbench.estimators.coupled:pimh", ep.SingleChainParams, "h(X_t) after t particle independent MH steps on the extended space (biased at finite t)"),
    Estimator("isir", "gradbench.estimators.coupled:isir", ep.SingleChainParams, "h(X_t) after t iterated-SIR steps on the extended space (biased at finite t)"),
    Estimator("coupled_pimh", "gradbench.estimators.coupled:coupled_pimh", ep.CoupledPIMHParams, "unbiased lag-L H_{k:m} from coupled PIMH chains (seed Alg. 4; shared proposal and uniform)"),
    Estimator("coupled_isir", "gradbench.estimators.coupled:coupled_isir", ep.CoupledISIRParams, "unbiased lag-L H_{k:m} from coupled i-SIR chains (shared fresh particles; maximal/common-uniform index coupling)"),
    Estimator("sumo", "gradbench.estimators.sumo:sumo", ep.SUMOParams, "θ-gradient of the SUMO Russian-roulette unbiased log p(x) (geometric or power truncation)"),
    Estimator("reparam_elbo", "gradbench.estimators.pathwise:reparam_elbo", ep.ReparamELBOParams, "reparameterised ∇φ ELBO, S samples, KL sampled or analytic", "phi"),
    Estimator("stl", "gradbench.estimators.pathwise:stl", ep.STLParams, "sticking-the-landing ∇φ ELBO (score term of log q dropped)", "phi"),
    Estimator("iwae_reparam", "gradbench.estimators.pathwise:iwae_reparam", ep.IWAEReparamParams, "reparameterised gradient of the IWAE_K bound w.r.t. φ or θ", "phi|theta"),
    Estimator("dreg", "gradbench.estimators.pathwise:dreg", ep.DReGParams, "doubly reparameterised ∇φ IWAE_K (Tucker et al. 2019)", "phi"),
    Estimator("reinforce", "gradbench.estimators.score:reinforce", ep.ReinforceParams, "score-function ∇φ ELBO with a baseline (none, moving average, learned, point, optimal LOO, RLOO)", "phi"),
    Estimator("vimco", "gradbench.estimators.score:vimco", ep.VIMCOParams, "score-function ∇φ IWAE_K with leave-one-out baselines (Mnih & Rezende 2016)", "phi"),
]}

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("bias", "gradbench.protocols.bias:bias", "bias_norm, rel_bias, bias_pvalue, bias_zmax against the reference gradient"),
    Protocol("variance", "gradbench.protocols.variance:variance", "trace_cov, mean_var, snr_median, mse, evals_mean, work_norm_var"),
    Protocol("wallclock", "gradbench.protocols.wallclock:wallclock", "seconds_per_estimate, evals_per_second (median, IQR), work_norm_var_seconds; device, torch/CUDA, threads", False),
    Protocol("meeting", "gradbench.protocols.meeting:meeting", "tau_mean, tau_q50/q90/q99, tau_max, n_censored, tail_rate (geometric fit of P(τ > t)) of coupled chains", False),
    Protocol("snr", "gradbench.protocols.snr:snr", "snr_q25, snr_q50, snr_q75: quartiles over coordinates of |E ĝ|/sd(ĝ) per group", False),
]}
