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
from gradbench.estimators import coupled, importance, pathwise, posterior, score, sumo, variational
from gradbench.estimators import ebm as ebm_estimators
from gradbench.models import ppca, ppca_encoder
from gradbench.models import ebm
from gradbench.protocols import ProtocolContext, Row
from gradbench.protocols.bias import bias
from gradbench.protocols.meeting import meeting
from gradbench.protocols.snr import snr
from gradbench.protocols.variance import variance
from gradbench.protocols.wallclock import wallclock


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
    uses_reference: bool = True  # False: the runner need not compute (or estimate) a reference for it


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
    Model("ppca_encoder", ppca_encoder.PPCAEncoder.synthetic, ppca_encoder.PPCAEncoderParams, ppca_encoder.EncoderParams,
          "PPCA with a linear-Gaussian encoder q_φ(z|x) = N(Ax+b, diag e^{2c}): exact ∇θ/∇φ ELBO; IWAE_K references estimated"),
    Model("rbm", ebm.RBM.build, ebm.RBMParams, ebm.NoProposal,
          "binary RBM (energy-based): exact log Z, ∇θ log p(x) by enumerating ≤ 16 hidden units; synthetic or binarised digits"),
    Model("ising", ebm.Ising.build, ebm.IsingParams, ebm.NoProposal,
          "fully visible ±1 Boltzmann machine, ≤ 20 spins: exact log Z, ∇θ log p(x) by enumerating 2^n states"),
]}

ESTIMATORS: dict[str, Estimator] = {e.name: e for e in [
    Estimator("exact", posterior.exact, posterior.ExactParams, "closed-form ∇θ log p(x) (zero variance; PPCA only)"),
    Estimator("oracle", posterior.oracle, posterior.OracleParams, "mean of ∇θ log p(x,z) over S exact-posterior samples (unbiased)"),
    Estimator("elbo", variational.elbo, variational.ELBOParams, "mean of ∇θ log p(x,z) over S samples from q (biased unless q = posterior)"),
    Estimator("iwae", importance.iwae, importance.IWAEParams, "self-normalised importance-weighted gradient, K samples (bias O(1/K))"),
    Estimator("pimh", coupled.pimh, coupled.SingleChainParams, "h(X_t) after t particle independent MH steps on the extended space (biased at finite t)"),
    Estimator("isir", coupled.isir, coupled.SingleChainParams, "h(X_t) after t iterated-SIR steps on the extended space (biased at finite t)"),
    Estimator("coupled_pimh", coupled.coupled_pimh, coupled.CoupledPIMHParams, "unbiased lag-L H_{k:m} from coupled PIMH chains (seed Alg. 4; shared proposal and uniform)"),
    Estimator("coupled_isir", coupled.coupled_isir, coupled.CoupledISIRParams, "unbiased lag-L H_{k:m} from coupled i-SIR chains (shared fresh particles; maximal/common-uniform index coupling)"),
    Estimator("sumo", sumo.sumo, sumo.SUMOParams, "θ-gradient of the SUMO Russian-roulette unbiased log p(x) (geometric or power truncation)"),
    Estimator("reparam_elbo", pathwise.reparam_elbo, pathwise.ReparamELBOParams, "reparameterised ∇φ ELBO, S samples, KL sampled or analytic", "phi"),
    Estimator("stl", pathwise.stl, pathwise.STLParams, "sticking-the-landing ∇φ ELBO (score term of log q dropped)", "phi"),
    Estimator("iwae_reparam", pathwise.iwae_reparam, pathwise.IWAEReparamParams, "reparameterised gradient of the IWAE_K bound w.r.t. φ or θ", "phi|theta"),
    Estimator("dreg", pathwise.dreg, pathwise.DReGParams, "doubly reparameterised ∇φ IWAE_K (Tucker et al. 2019)", "phi"),
    Estimator("reinforce", score.reinforce, score.ReinforceParams, "score-function ∇φ ELBO with a baseline (none, moving average, learned, point, optimal LOO, RLOO)", "phi"),
    Estimator("exact_sampling", ebm_estimators.exact_sampling, ebm_estimators.ExactSamplingParams, "EBM: model term from S exact samples of p_θ by enumeration (the oracle; unbiased; cost in sweeps)"),
    Estimator("cd", ebm_estimators.cd, ebm_estimators.CDParams, "EBM: contrastive divergence CD-k from the data points (biased at finite k; cost N·k sweeps)"),
    Estimator("pcd", ebm_estimators.pcd, ebm_estimators.PCDParams, "EBM: persistent CD, S chains of a given age (explicit state; biased at finite age)"),
    Estimator("coupled_gibbs", ebm_estimators.coupled_gibbs, ebm_estimators.CoupledGibbsParams, "EBM: unbiased lag-L H_{k:m} from coupled Gibbs chains (maximal couplings of the Bernoulli conditionals)"),
    Estimator("vimco", score.vimco, score.VIMCOParams, "score-function ∇φ IWAE_K with leave-one-out baselines (Mnih & Rezende 2016)", "phi"),
]}

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("bias", bias, "bias_norm, rel_bias, bias_pvalue, bias_zmax against the reference gradient"),
    Protocol("variance", variance, "trace_cov, mean_var, snr_median, mse, evals_mean, work_norm_var"),
    Protocol("wallclock", wallclock, "seconds_per_estimate, evals_per_second (median, IQR), work_norm_var_seconds; device, torch/CUDA, threads", False),
    Protocol("meeting", meeting, "tau_mean, tau_q50/q90/q99, tau_max, n_censored, tail_rate (geometric fit of P(τ > t)) of coupled chains", False),
    Protocol("snr", snr, "snr_q25, snr_q50, snr_q75: quartiles over coordinates of |E ĝ|/sd(ĝ) per group", False),
]}
