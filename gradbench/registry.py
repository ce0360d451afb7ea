"""The explicit registry of models, estimators and protocols — and how plugins join it.

Adding an estimator is one line in ``ESTIMATORS`` (after writing its file from
``estimators/_template.py``). Names are what suites use; descriptions are what
``gradbench list`` prints. Each estimator declares the :class:`~gradbench.contracts.Objective` it
estimates and the capabilities it requires of a target; each model declares the capabilities its
targets provide (a function of the suite's ``proposal`` block, which may choose a family), so
``gradbench validate`` refuses an impossible pairing before any cell runs.

**Plugins** add models, estimators and protocols without editing gradbench:
* entry points in the groups ``gradbench.models``, ``gradbench.estimators``, ``gradbench.protocols``
  (and ``gradbench.families``: modules imported for their side effects), each pointing at a
  :class:`Model` / :class:`Estimator` / :class:`Protocol` object (or a list of them);
* a suite's ``plugins: [my_package.my_module]``: the module is imported and calls
  :func:`register` with its entries.
A plugin entry records its module; a cell's id covers that module's version (see ``code_version``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel

from gradbench.contracts import LOG_MARGINAL, Objective
from gradbench.core import GradSample, Reference
from gradbench.estimators import coupled, importance, pathwise, posterior, score, sumo, variational
from gradbench.estimators import ebm as ebm_estimators
from gradbench.families import bernoulli, gaussian
from gradbench.models import ebm, ppca, ppca_encoder, sbn, vae
from gradbench.protocols import ProtocolContext, Row
from gradbench.protocols.bias import bias
from gradbench.protocols.meeting import meeting
from gradbench.protocols.snr import snr
from gradbench.protocols.variance import variance
from gradbench.protocols.wallclock import wallclock


Capabilities = frozenset[str]


@dataclass(frozen=True)
class Model:
    name: str
    build: Callable[..., Any]  # (params, proposal, seed, dtype, device, data) -> target
    params: type[BaseModel]
    proposal: type[BaseModel]
    description: str
    provides: Callable[[dict[str, Any]], Capabilities] | Capabilities = frozenset()  # of the built target
    modules: tuple[str, ...] = ()  # modules whose source computes the target (besides build's own)
    synthetic_data: bool = True  # False: the target needs a ``data:`` entry

    def capabilities(self, proposal: dict[str, Any]) -> Capabilities:
        return self.provides(proposal) if callable(self.provides) else self.provides


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[..., GradSample]  # (target, R, gen, **params) -> GradSample
    params: type[BaseModel]
    description: str
    estimates: Callable[[dict[str, Any]], Objective] | Objective = LOG_MARGINAL  # what its bias is measured against
    requires: Callable[[dict[str, Any]], Capabilities] | Capabilities = frozenset({"log_prob"})

    def objective(self, params: dict[str, Any]) -> Objective:
        return self.estimates(params) if callable(self.estimates) else self.estimates

    def required(self, params: dict[str, Any]) -> Capabilities:
        return self.requires(params) if callable(self.requires) else self.requires

    @property
    def wrt(self) -> str:
        """``theta`` or ``phi`` (with default parameters)."""
        return self.objective(self.params().model_dump()).wrt


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


_EBM = frozenset({"energy_based"})  # p_θ(x) ∝ exp(−F_θ(x)), no per-datum latents: exact sampling / Gibbs kernels

MODELS: dict[str, Model] = {m.name: m for m in [
    Model("ppca", _build_ppca, ppca.PPCAParams, ppca.ProposalParams,
          "probabilistic PCA: exact log-likelihood gradient, exact posterior, proposal with mismatch (δ, s)",
          ppca.PPCA.capabilities, ("gradbench.models.ppca",)),
    Model("ppca_encoder", ppca_encoder.PPCAEncoder.synthetic, ppca_encoder.PPCAEncoderParams, ppca_encoder.EncoderParams,
          "PPCA with a linear-Gaussian encoder q_φ(z|x) = N(Ax+b, diag e^{2c}): exact ∇θ/∇φ ELBO; IWAE_K references estimated",
          ppca_encoder.PPCAEncoder.capabilities, ("gradbench.models.ppca", "gradbench.models.ppca_encoder")),
    Model("sbn", sbn.build, sbn.PARAMS, sbn.PROPOSAL, sbn.DESCRIPTION,
          bernoulli.CAPABILITIES | {"binary_latent", "exact_posterior"},
          ("gradbench.models.sbn", "gradbench.families.bernoulli", "gradbench.references.enumeration")),
    Model("vae", vae.build, vae.PARAMS, vae.PROPOSAL, vae.DESCRIPTION,
          gaussian.GAUSSIAN_CAPABILITIES | {"real_latent", "analytic_kl"},
          ("gradbench.models.vae", "gradbench.families.gaussian", "gradbench.references.quadrature")),
    Model("rbm", ebm.RBM.build, ebm.RBMParams, ebm.NoProposal,
          "binary RBM (energy-based): exact log Z, ∇θ log p(x) by enumerating ≤ 16 hidden units; synthetic or binarised digits",
          _EBM, ("gradbench.models.ebm",)),
    Model("ising", ebm.Ising.build, ebm.IsingParams, ebm.NoProposal,
          "fully visible ±1 Boltzmann machine, ≤ 20 spins: exact log Z, ∇θ log p(x) by enumerating 2^n states",
          _EBM, ("gradbench.models.ebm",)),
]}

_THETA, _PHI_ELBO = LOG_MARGINAL, Objective("phi", "elbo")
_SAMPLE = frozenset({"log_prob"})  # draws from q and evaluates log q (importance weights)
_REPARAM = frozenset({"reparam", "log_prob"})
_SCORE = frozenset({"score", "log_prob"})


def _iwae_objective(p: dict[str, Any]) -> Objective:
    return Objective(p.get("wrt", "phi"), "iwae", p["K"]).canonical()


def _phi_iwae(p: dict[str, Any]) -> Objective:
    return Objective("phi", "iwae", p["K"]).canonical()


def _with_kl(base: Capabilities) -> Callable[[dict[str, Any]], Capabilities]:
    return lambda p: base | {"analytic_kl"} if p.get("kl") == "analytic" else base

ESTIMATORS: dict[str, Estimator] = {e.name: e for e in [
    Estimator("exact", posterior.exact, posterior.ExactParams, "closed-form / enumerated / quadrature ∇θ log p(x) (zero variance)",
              requires=frozenset()),
    Estimator("oracle", posterior.oracle, posterior.OracleParams, "mean of ∇θ log p(x,z) over S exact-posterior samples (unbiased)",
              requires=frozenset({"exact_posterior"})),
    Estimator("elbo", variational.elbo, variational.ELBOParams, "mean of ∇θ log p(x,z) over S samples from q (biased unless q = posterior)"),
    Estimator("iwae", importance.iwae, importance.IWAEParams, "self-normalised importance-weighted gradient, K samples (bias O(1/K))"),
    Estimator("pimh", coupled.pimh, coupled.SingleChainParams, "h(X_t) after t particle independent MH steps on the extended space (biased at finite t)"),
    Estimator("isir", coupled.isir, coupled.SingleChainParams, "h(X_t) after t iterated-SIR steps on the extended space (biased at finite t)"),
    Estimator("coupled_pimh", coupled.coupled_pimh, coupled.CoupledPIMHParams, "unbiased lag-L H_{k:m} from coupled PIMH chains (seed Alg. 4; shared proposal and uniform)"),
    Estimator("coupled_isir", coupled.coupled_isir, coupled.CoupledISIRParams, "unbiased lag-L H_{k:m} from coupled i-SIR chains (shared fresh particles; maximal/common-uniform index coupling)"),
    Estimator("sumo", sumo.sumo, sumo.SUMOParams, "θ-gradient of the SUMO Russian-roulette unbiased log p(x) (geometric or power truncation)"),
    Estimator("reparam_elbo", pathwise.reparam_elbo, pathwise.ReparamELBOParams, "reparameterised ∇φ ELBO, S samples, KL sampled or analytic",
              _PHI_ELBO, _with_kl(_REPARAM)),
    Estimator("stl", pathwise.stl, pathwise.STLParams, "sticking-the-landing ∇φ ELBO (score term of log q dropped)", _PHI_ELBO, _REPARAM),
    Estimator("iwae_reparam", pathwise.iwae_reparam, pathwise.IWAEReparamParams, "reparameterised gradient of the IWAE_K bound w.r.t. φ or θ",
              _iwae_objective, lambda p: _REPARAM if p.get("wrt", "phi") == "phi" else _SAMPLE),
    Estimator("dreg", pathwise.dreg, pathwise.DReGParams, "doubly reparameterised ∇φ IWAE_K (Tucker et al. 2019)", _phi_iwae, _REPARAM),
    Estimator("reinforce", score.reinforce, score.ReinforceParams, "score-function ∇φ ELBO with a baseline (none, moving average, learned, point, optimal LOO, RLOO)",
              _PHI_ELBO, _with_kl(_SCORE)),
    Estimator("vimco", score.vimco, score.VIMCOParams, "score-function ∇φ IWAE_K with leave-one-out baselines (Mnih & Rezende 2016)", _phi_iwae, _SCORE),
    Estimator("exact_sampling", ebm_estimators.exact_sampling, ebm_estimators.ExactSamplingParams,
              "EBM: model term from S exact samples of p_θ by enumeration (the oracle; unbiased; cost in sweeps)", requires=_EBM),
    Estimator("cd", ebm_estimators.cd, ebm_estimators.CDParams,
              "EBM: contrastive divergence CD-k from the data points (biased at finite k; cost N·k sweeps)", requires=_EBM),
    Estimator("pcd", ebm_estimators.pcd, ebm_estimators.PCDParams,
              "EBM: persistent CD, S chains of a given age (explicit state; biased at finite age)", requires=_EBM),
    Estimator("coupled_gibbs", ebm_estimators.coupled_gibbs, ebm_estimators.CoupledGibbsParams,
              "EBM: unbiased lag-L H_{k:m} from coupled Gibbs chains (maximal couplings of the Bernoulli conditionals)", requires=_EBM),
]}

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("bias", bias, "bias_norm, rel_bias, bias_pvalue, bias_zmax against the reference gradient"),
    Protocol("variance", variance, "trace_cov, mean_var, snr_median, mse, evals_mean, work_norm_var"),
    Protocol("wallclock", wallclock, "seconds_per_estimate, evals_per_second (median, IQR), work_norm_var_seconds; device, torch/CUDA, threads", False),
    Protocol("meeting", meeting, "tau_mean, tau_q50/q90/q99, tau_max, n_censored, tail_rate (geometric fit of P(τ > t)) of coupled chains", False),
    Protocol("snr", snr, "snr_q25, snr_q50, snr_q75: quartiles over coordinates of |E ĝ|/sd(ĝ) per group", False),
]}


# -- plugins -----------------------------------------------------------------------------------
ENTRY_POINT_GROUPS = {"gradbench.models": MODELS, "gradbench.estimators": ESTIMATORS, "gradbench.protocols": PROTOCOLS,
                      "gradbench.families": None}
PLUGIN_MODULES: dict[str, str] = {}  # entry name → module that registered it (for cell ids)


class PluginError(Exception):
    """A plugin that cannot be loaded or registers something invalid (one line)."""


def register(*entries: Model | Estimator | Protocol, module: str | None = None) -> None:
    """Add entries to the registry (a plugin module calls this at import). A name already taken is refused."""
    for entry in entries:
        table: dict[str, Any] = MODELS if isinstance(entry, Model) else ESTIMATORS if isinstance(entry, Estimator) \
            else PROTOCOLS if isinstance(entry, Protocol) else None  # type: ignore[assignment]
        if table is None:
            raise PluginError(f"cannot register {entry!r}: expected a registry.Model, Estimator or Protocol")
        owner = module or _defining_module(entry)
        if entry.name in table and PLUGIN_MODULES.get(entry.name) != owner:
            if table[entry.name] is entry:
                continue
            raise PluginError(f"plugin {owner}: name {entry.name!r} is already registered")
        table[entry.name] = entry
        PLUGIN_MODULES[entry.name] = owner


def _defining_module(entry: Any) -> str:
    fn = getattr(entry, "build", None) or getattr(entry, "fn", None)
    return getattr(fn, "__module__", "") or ""


def load_plugin_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import the suite's ``plugins:`` modules (on the main process and on every Dask worker)."""
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 — reported as one located line by the suite loader
            raise PluginError(f"plugin module {name!r} could not be imported: {type(exc).__name__}: {exc}") from None


@lru_cache(maxsize=1)
def load_entry_points() -> None:
    """Register every installed plugin's entry points (once per process)."""
    for group, table in ENTRY_POINT_GROUPS.items():
        for ep in importlib.metadata.entry_points(group=group):
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"entry point {group}:{ep.name} ({ep.value}) failed to load: {type(exc).__name__}: {exc}") \
                    from None
            if table is None:  # families: imported for their side effects
                continue
            for entry in obj if isinstance(obj, (list, tuple)) else [obj]:
                register(entry, module=ep.module)


def code_version(module: str) -> str:
    """What a cell's id records of the code that computes it: ``<dist>==<version>`` for a module of an installed
    distribution other than gradbench, else a hash of the module's source file (edits invalidate cells)."""
    return _code_version(module)


@lru_cache(maxsize=None)
def _code_version(module: str) -> str:
    top = module.split(".")[0]
    if top != "gradbench":
        dists = importlib.metadata.packages_distributions().get(top, [])
        for dist in dists:
            try:
                return f"{dist}=={importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                pass
    mod = sys.modules.get(module) or importlib.import_module(module)
    try:
        source = Path(inspect.getfile(mod)).read_bytes()
    except (TypeError, OSError):
        return "unknown"
    return hashlib.sha256(source).hexdigest()[:16]


def estimator_modules(name: str) -> tuple[str, ...]:
    """Modules whose source determines an estimator's output: its own module and the contract it runs on."""
    fn = ESTIMATORS[name].fn
    return tuple(dict.fromkeys([fn.__module__, "gradbench.contracts", "gradbench.core"]))


def model_modules(name: str) -> tuple[str, ...]:
    entry = MODELS[name]
    return tuple(dict.fromkeys([entry.build.__module__, *entry.modules]))
