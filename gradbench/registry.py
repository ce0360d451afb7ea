"""The explicit registry of models, estimators and protocols — and how plugins join it.

Adding an estimator is one line in ``ESTIMATORS`` (after writing its file from
``estimators/_template.py``). Names are what suites use; descriptions are what ``gradbench list``
prints. Code is named by ``"module:attr"`` path and imported on first use (``entry.fn`` /
``entry.build`` / ``entry.params`` return the object); the schemas of the PPCA family and of the
estimators are torch-free (``estimators/params.py``, ``models/params.py``), so ``list`` and
``validate`` of those suites never import torch.

Each estimator declares the :class:`~gradbench.contracts.Objective` it estimates and the
capabilities it requires of a target; each model declares the capabilities its targets provide (a
function of the suite's ``proposal`` block, which may choose a family), so ``gradbench validate``
refuses an impossible pairing before any cell runs.

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
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from gradbench.contracts import LOG_MARGINAL, Objective
from gradbench.estimators import params as ep
from gradbench.models import params as mp

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gradbench.core import GradSample, Reference
    from gradbench.protocols import ProtocolContext, Row

Capabilities = frozenset[str]


def resolve(impl: Any) -> Any:
    """The object named ``"package.module:attr.attr"``, imported on first use, or ``impl`` itself."""
    if not isinstance(impl, str):
        return impl
    module, _, attr = impl.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class _CodeByPath:
    """Fields named in ``_CODE`` may hold a ``"module:attr"`` path: reading them imports it."""

    _CODE = ("fn", "build", "params", "proposal")

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        return resolve(value) if name in _CodeByPath._CODE and isinstance(value, str) else value

    def module_of(self, field: str) -> str:
        """The module that defines a code field, without importing it."""
        value = object.__getattribute__(self, field)
        return value.partition(":")[0] if isinstance(value, str) else value.__module__


@dataclass(frozen=True)
class Model(_CodeByPath):
    name: str
    build: Callable[..., Any]  # (params, proposal, seed, dtype, device, data) -> target; or its "module:attr"
    params: type[BaseModel]  # or its "module:attr"
    proposal: type[BaseModel]  # or its "module:attr"
    description: str
    provides: Callable[[dict[str, Any]], Capabilities] | Capabilities = frozenset()  # of the built target
    modules: tuple[str, ...] = ()  # modules whose source computes the target (besides build's own)

    def capabilities(self, proposal: dict[str, Any]) -> Capabilities:
        return self.provides(proposal) if callable(self.provides) else self.provides


@dataclass(frozen=True)
class Estimator(_CodeByPath):
    name: str
    fn: Callable[..., GradSample]  # (target, R, gen, **params) -> GradSample; or its "module:attr"
    params: type[BaseModel]
    description: str
    estimates: Callable[[dict[str, Any]], Objective] | Objective = LOG_MARGINAL  # what its bias is measured against
    requires: Callable[[dict[str, Any]], Capabilities] | Capabilities = frozenset({"log_prob"})
    runs: Callable[[dict[str, Any]], tuple[str, ...]] = lambda p: ()  # registered estimators it runs inside (cell ids)

    def objective(self, params: dict[str, Any]) -> Objective:
        return self.estimates(params) if callable(self.estimates) else self.estimates

    def required(self, params: dict[str, Any]) -> Capabilities:
        return self.requires(params) if callable(self.requires) else self.requires

    @property
    def wrt(self) -> str:
        """``theta`` or ``phi`` (with default parameters)."""
        return self.objective(self.params().model_dump()).wrt


@dataclass(frozen=True)
class Protocol(_CodeByPath):
    name: str
    fn: Callable[[GradSample, Reference | None, ProtocolContext], list[Row]]  # or its "module:attr"
    description: str
    uses_reference: bool = True  # False: the runner need not compute (or estimate) a reference for it
    modules: tuple[str, ...] = ()  # modules whose source computes its rows besides fn's own (for cell ids)


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


_PPCA = frozenset({"exact_posterior", "real_latent", "log_prob"})


def _uivi_requires(p: dict[str, Any]) -> Capabilities:
    """uivi: reverse exact/marginal need log q; the default reverse HMC runs over ε, so it needs a continuous ε."""
    reverse = p.get("reverse", "hmc")
    return frozenset({"reparam", "implicit"} | ({"log_prob"} if reverse in ("exact", "marginal") else set())
                     | ({"mixing_density"} if reverse == "hmc" else set()))


def _semi_implicit_q(proposal: dict[str, Any]) -> Capabilities:
    """Issue 14: a semi-implicit q has log q only when T is linear (``hidden`` = 0)."""
    exact = not proposal.get("hidden", 0) or bool(proposal.get("n_atoms", 0))  # atoms: an exact Gaussian mixture
    continuous = not proposal.get("n_atoms", 0)  # ε ~ N(0, I): HMC over ε is possible (uivi reverse: hmc)
    return frozenset({"real_latent", "reparam", "implicit"} | ({"log_prob"} if exact else set())
                     | ({"mixing_density"} if continuous else set()))
_GAUSSIAN_Q = frozenset({"reparam", "score", "log_prob"})
_BERNOULLI_Q = frozenset({"score", "log_prob", "enumerate", "relaxed"})
_EBM = frozenset({"energy_based"})  # p_θ(x) ∝ exp(−F_θ(x)), no per-datum latents: exact sampling / Gibbs kernels

MODELS: dict[str, Model] = {m.name: m for m in [
    Model("ppca", _build_ppca, mp.PPCAParams, mp.ProposalParams,
          "probabilistic PCA: exact log-likelihood gradient, exact posterior, proposal with mismatch (δ, s)",
          _PPCA, ("gradbench.models.ppca",)),
    Model("ppca_encoder", "gradbench.models.ppca_encoder:PPCAEncoder.synthetic", mp.PPCAEncoderParams, mp.EncoderParams,
          "PPCA with a linear-Gaussian encoder q_φ(z|x) = N(Ax+b, diag e^{2c}): exact ∇θ/∇φ ELBO; IWAE_K references estimated",
          _PPCA | _GAUSSIAN_Q | {"analytic_kl"}, ("gradbench.models.ppca", "gradbench.models.ppca_encoder")),
    Model("vae", "gradbench.models.vae:build", mp.VAEParams, mp.GaussianProposal,
          "VAE: z ~ N(0, I), MLP decoder (Bernoulli/Gaussian); Gaussian mean-field or amortised q; exact references by "
          "adaptive Gauss–Hermite quadrature for latent_dim ≤ 3",
          _GAUSSIAN_Q | {"real_latent", "analytic_kl"},
          ("gradbench.models.vae", "gradbench.families.gaussian", "gradbench.references.quadrature")),
    Model("sbn", "gradbench.models.sbn:build", mp.SBNParams, mp.BernoulliProposal,
          "sigmoid belief net (binary latents, 1–2 layers, linear or MLP conditionals), factorised Bernoulli q: exact "
          "references by enumerating the 2^k latent states (k ≤ 16)",
          _BERNOULLI_Q | {"binary_latent", "exact_posterior"},
          ("gradbench.models.sbn", "gradbench.families.bernoulli", "gradbench.references.enumeration")),
    Model("rbm", "gradbench.models.ebm:RBM.build", mp.RBMParams, mp.NoProposal,
          "binary RBM (energy-based): exact log Z, ∇θ log p(x) by enumerating ≤ 16 hidden units; synthetic or binarised digits",
          _EBM, ("gradbench.models.ebm",)),
    Model("ising", "gradbench.models.ebm:Ising.build", mp.IsingParams, mp.NoProposal,
          "fully visible ±1 Boltzmann machine, ≤ 20 spins: exact log Z, ∇θ log p(x) by enumerating 2^n states",
          _EBM, ("gradbench.models.ebm",)),
    # issue 14: semi-implicit q
    Model("ppca_semi_implicit", "gradbench.models.semi_implicit:build_ppca", mp.PPCAParams, mp.SemiImplicitProposal,
          "PPCA with a semi-implicit q (ε ~ N(0, I_m), z|ε ~ N(Aε + b [+ MLP], diag d²)): exact ∇φ ELBO (linear T)",
          lambda p: _semi_implicit_q(p), ("gradbench.models.ppca", "gradbench.families.semi_implicit")),
    Model("vae_semi_implicit", "gradbench.models.semi_implicit:build_vae", mp.VAEParams, mp.SemiImplicitProposal,
          "VAE decoder with a semi-implicit q started at the Laplace approximation: quadrature ∇φ ELBO (linear T, k ≤ 3)",
          lambda p: _semi_implicit_q(p), ("gradbench.models.vae", "gradbench.families.semi_implicit",
                                          "gradbench.references.quadrature")),
    Model("toy2d_semi_implicit", "gradbench.models.toy2d:build", mp.Toy2DParams, mp.SemiImplicitProposal,
          "2-D banana / X-shaped density of the SIVI/UIVI papers (no data) with a semi-implicit q: quadrature ∇φ ELBO",
          lambda p: _semi_implicit_q(p), ("gradbench.models.toy2d", "gradbench.models.semi_implicit",
                                          "gradbench.families.semi_implicit", "gradbench.references.quadrature")),
    # issue 13: discrete latent variables
    Model("bernoulli_toy", "gradbench.models.bernoulli_toy:build", mp.BernoulliToyParams,
          mp.BernoulliToyProposal,
          "REBAR/RELAX toy: min_φ E_{b~Bern(σ(φ))} Σ_j (b_j − t)² (t = 0.499); exact ∇φ = (1 − 2t)σ(φ)(1 − σ(φ)) as phi_elbo",
          _BERNOULLI_Q | {"binary_latent"}, ("gradbench.models.bernoulli_toy", "gradbench.families.bernoulli")),
    Model("categorical_vae", "gradbench.models.categorical:build", mp.CategoricalVAEParams, mp.CategoricalProposal,
          "categorical VAE (k latents × C classes; Kool et al. 2020: 2 × 10), linear or MLP decoder to Bernoulli pixels, "
          "amortised softmax encoder: exact references by enumerating the C^k states",
          frozenset({"score", "log_prob", "enumerate", "relaxed", "categorical_latent", "exact_posterior"}),
          ("gradbench.models.categorical", "gradbench.families.categorical", "gradbench.references.enumeration")),
]}

_PHI_ELBO = Objective("phi", "elbo")
_SAMPLE = frozenset({"log_prob"})  # draws from q and evaluates log q (importance weights)
_REPARAM = frozenset({"reparam", "log_prob"})
_SCORE = frozenset({"score", "log_prob"})
_BINARY_SCORE = frozenset({"score", "log_prob", "binary_latent"})  # issue 13: factorised Bernoulli q
_DISCRETE_SCORE = frozenset({"score", "log_prob", "enumerate"})  # issue 13: a finite q with logits (binary or categorical)
_RELAXED = _DISCRETE_SCORE | {"relaxed"}  # issue 13: and its Concrete / Gumbel-softmax relaxation


def _iwae_objective(p: dict[str, Any]) -> Objective:
    return Objective(p.get("wrt", "phi"), "iwae", p["K"]).canonical()


def _phi_iwae(p: dict[str, Any]) -> Objective:
    return Objective("phi", "iwae", p["K"]).canonical()


def _with_kl(base: Capabilities) -> Callable[[dict[str, Any]], Capabilities]:
    return lambda p: base | {"analytic_kl"} if p.get("kl") == "analytic" else base


_E = "gradbench.estimators."
ESTIMATORS: dict[str, Estimator] = {e.name: e for e in [
    Estimator("exact", _E + "posterior:exact", ep.ExactParams, "closed-form / enumerated / quadrature ∇θ log p(x) (zero variance)",
              requires=frozenset()),
    Estimator("oracle", _E + "posterior:oracle", ep.OracleParams, "mean of ∇θ log p(x,z) over S exact-posterior samples (unbiased)",
              requires=frozenset({"exact_posterior"})),
    Estimator("elbo", _E + "variational:elbo", ep.ELBOParams, "mean of ∇θ log p(x,z) over S samples from q (biased unless q = posterior)"),
    Estimator("iwae", _E + "importance:iwae", ep.IWAEParams, "self-normalised importance-weighted gradient, K samples (bias O(1/K))"),
    Estimator("pimh", _E + "coupled:pimh", ep.SingleChainParams, "h(X_t) after t particle independent MH steps on the extended space (biased at finite t)"),
    Estimator("isir", _E + "coupled:isir", ep.SingleChainParams, "h(X_t) after t iterated-SIR steps on the extended space (biased at finite t)"),
    Estimator("coupled_pimh", _E + "coupled:coupled_pimh", ep.CoupledPIMHParams, "unbiased lag-L H_{k:m} from coupled PIMH chains (seed Alg. 4; shared proposal and uniform)"),
    Estimator("coupled_isir", _E + "coupled:coupled_isir", ep.CoupledISIRParams, "unbiased lag-L H_{k:m} from coupled i-SIR chains (shared fresh particles; maximal/common-uniform index coupling)"),
    Estimator("sumo", _E + "sumo:sumo", ep.SUMOParams, "θ-gradient of the SUMO Russian-roulette unbiased log p(x) (geometric or power truncation)"),
    Estimator("reparam_elbo", _E + "pathwise:reparam_elbo", ep.ReparamELBOParams, "reparameterised ∇φ ELBO, S samples, KL sampled or analytic",
              _PHI_ELBO, _with_kl(_REPARAM)),
    Estimator("stl", _E + "pathwise:stl", ep.STLParams, "sticking-the-landing ∇φ ELBO (score term of log q dropped)", _PHI_ELBO, _REPARAM),
    Estimator("iwae_reparam", _E + "pathwise:iwae_reparam", ep.IWAEReparamParams, "reparameterised gradient of the IWAE_K bound w.r.t. φ or θ",
              _iwae_objective, lambda p: _REPARAM if p.get("wrt", "phi") == "phi" else _SAMPLE),
    Estimator("dreg", _E + "pathwise:dreg", ep.DReGParams, "doubly reparameterised ∇φ IWAE_K (Tucker et al. 2019)", _phi_iwae, _REPARAM),
    Estimator("reinforce", _E + "score:reinforce", ep.ReinforceParams, "score-function ∇φ ELBO with a baseline (none, moving average, learned, point, optimal LOO, RLOO)",
              _PHI_ELBO, _with_kl(_SCORE)),
    Estimator("vimco", _E + "score:vimco", ep.VIMCOParams, "score-function ∇φ IWAE_K with leave-one-out baselines (Mnih & Rezende 2016)", _phi_iwae, _SCORE),
    Estimator("train", "gradbench.protocols.train:protocol", ep.TrainParams,
              "issue 15: not an estimator — a training run (θ-estimator, φ-estimator, seed) for the protocol 'train'",
              requires=lambda p: _train_requires(p), runs=lambda p: _train_runs(p)),
    Estimator("exact_sampling", _E + "ebm:exact_sampling", ep.ExactSamplingParams,
              "EBM: model term from S exact samples of p_θ by enumeration (the oracle; unbiased; cost in sweeps)", requires=_EBM),
    Estimator("cd", _E + "ebm:cd", ep.CDParams,
              "EBM: contrastive divergence CD-k from the data points (biased at finite k; cost N·k sweeps)", requires=_EBM),
    Estimator("pcd", _E + "ebm:pcd", ep.PCDParams,
              "EBM: persistent CD, S chains of a given age (explicit state; biased at finite age)", requires=_EBM),
    Estimator("coupled_gibbs", _E + "ebm:coupled_gibbs", ep.CoupledGibbsParams,
              "EBM: unbiased lag-L H_{k:m} from coupled Gibbs chains (maximal couplings of the Bernoulli conditionals)", requires=_EBM),
    # issue 14: semi-implicit and MCMC-enriched families
    Estimator("sivi", _E + "semi_implicit:sivi", ep.SIVIParams,
              "gradient of the SIVI bound with K extra mixing draws (Yin & Zhou 2018; biased for ∇φ ELBO, → 0 as K grows)",
              _PHI_ELBO, frozenset({"reparam", "implicit"})),
    Estimator("uivi", _E + "semi_implicit:uivi", ep.UIVIParams,
              "UIVI ∇φ ELBO, ∇_z log q from HMC on q(ε|z) started at ε⁰ (Titsias & Ruiz 2019); reverse: exact is unbiased",
              _PHI_ELBO, _uivi_requires),
    Estimator("density_ratio", _E + "semi_implicit:density_ratio", ep.DensityRatioParams,
              "∇φ ELBO with log q/p(z) from a quadratic logistic classifier (q vs N(0, I) prior) trained `steps` Newton steps",
              _PHI_ELBO, frozenset({"reparam", "implicit"})),
    Estimator("vcd", _E + "semi_implicit:vcd", ep.VCDParams,
              "−∇φ L_VCD with t HMC steps on p(z|x) and a leave-one-out control variate (Ruiz & Titsias 2019)",
              _PHI_ELBO, _REPARAM),
    # issue 13: discrete-latent ∇φ estimators (factorised Bernoulli q; gradbench.estimators.discrete)
    Estimator("arm", _E + "discrete:arm", ep.ARMParams, "ARM ∇φ ELBO (Yin & Zhou 2019): antithetic pair, (f(b¹) − f(b²))(u − ½)",
              _PHI_ELBO, _BINARY_SCORE),
    Estimator("disarm", _E + "discrete:disarm", ep.DisARMParams, "DisARM ∇φ ELBO (Dong et al. 2020): ARM Rao–Blackwellised over the pair",
              _PHI_ELBO, _BINARY_SCORE),
    Estimator("rloo", _E + "discrete:rloo", ep.RLOOParams, "REINFORCE leave-one-out ∇φ ELBO on binary latents (Kool et al. 2019), S samples",
              _PHI_ELBO, _DISCRETE_SCORE),
    Estimator("nvil", _E + "discrete:nvil", ep.NVILParams, "NVIL ∇φ ELBO (Mnih & Gregor 2014): running mean + input-dependent baseline, warm-up steps",
              _PHI_ELBO, _DISCRETE_SCORE),
    Estimator("gumbel_softmax", _E + "discrete:gumbel_softmax", ep.RelaxedParams, "binary Concrete pathwise ∇φ, temperature τ (biased)",
              _PHI_ELBO, _RELAXED),
    Estimator("straight_through", _E + "discrete:straight_through", ep.RelaxedParams, "straight-through Gumbel ∇φ: hard forward, relaxed backward (biased)",
              _PHI_ELBO, _RELAXED),
    Estimator("rebar", _E + "discrete:rebar", ep.REBARParams, "REBAR ∇φ ELBO (Tucker et al. 2017): η, λ fixed or learned in warm-up",
              _PHI_ELBO, _BINARY_SCORE),
    Estimator("relax", _E + "discrete:relax", ep.RELAXParams, "RELAX ∇φ ELBO (Grathwohl et al. 2018): surrogate c_ψ trained in warm-up to minimise variance",
              _PHI_ELBO, _BINARY_SCORE),
    Estimator("wake_sleep", _E + "discrete:wake_sleep", ep.WakeSleepParams, "sleep-phase φ-update (Hinton et al. 1995), measured against ∇φ ELBO (biased)",
              _PHI_ELBO, _BINARY_SCORE),
    Estimator("reweighted_wake_sleep", _E + "discrete:reweighted_wake_sleep", ep.RWSParams,
              "RWS wake-φ update (Bornschein & Bengio 2015), K samples, measured against ∇φ ELBO (biased)", _PHI_ELBO, _BINARY_SCORE),
    Estimator("sum_and_sample", _E + "sum_and_sample:sum_and_sample", ep.SumAndSampleParams,
              "sum-and-sample ∇φ ELBO (Liu et al. 2019): m most probable states summed, one sampled from the rest (unbiased)",
              _PHI_ELBO, _DISCRETE_SCORE),
]}

def _train_requires(p: dict[str, Any]) -> Capabilities:
    """What the ``train`` pseudo-estimator's two estimators require (of the target's family kind: a fresh encoder of the
    same kind is trained — Gaussian, reparameterised, for real z; Bernoulli, score only, for binary z)."""
    if p.get("phi_estimator", "reparam_elbo") is None:  # issue 16: θ-only training, energy-based models only
        return ESTIMATORS[p.get("theta_estimator", "elbo")].required(p.get("theta_params", {})) | _EBM
    theta, phi = ESTIMATORS[p.get("theta_estimator", "elbo")], ESTIMATORS[p.get("phi_estimator", "reparam_elbo")]
    warm = p.get("warmup_theta_estimator")
    warm_needs = ESTIMATORS[warm].required(p.get("warmup_theta_params", {})) if warm is not None else frozenset()
    return theta.required(p.get("theta_params", {})) | phi.required(p.get("phi_params", {})) | warm_needs


def _train_runs(p: dict[str, Any]) -> tuple[str, ...]:
    """The ``train`` pseudo-estimator's θ- and φ-estimators and its warm-up θ-estimator (defaults included; φ is None
    for θ-only training)."""
    return tuple(n for n in (p.get("theta_estimator", "elbo"), p.get("phi_estimator", "reparam_elbo"),
                             p.get("warmup_theta_estimator")) if n is not None)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("bias", "gradbench.protocols.bias:bias", "bias_norm, rel_bias, bias_pvalue, bias_zmax against the reference gradient"),
    Protocol("variance", "gradbench.protocols.variance:variance", "trace_cov, mean_var, snr_median, mse, evals_mean, work_norm_var"),
    Protocol("wallclock", "gradbench.protocols.wallclock:wallclock", "seconds_per_estimate, evals_per_second (median, IQR), work_norm_var_seconds; device, torch/CUDA, threads", False),
    Protocol("meeting", "gradbench.protocols.meeting:meeting", "tau_mean, tau_q50/q90/q99, tau_max, n_censored, tail_rate (geometric fit of P(τ > t)) of coupled chains", False),
    Protocol("train", "gradbench.protocols.train:protocol",
             "issue 15: train θ and φ with estimator 'train' → test_loglik (exact) or test_iwae_bound (IWAE-K lower bound), train_*, steps, evals, seconds, censored_steps; curves.parquet", False,
             modules=("gradbench.protocols.train_ebm",)),
    Protocol("snr", "gradbench.protocols.snr:snr", "snr_q25, snr_q50, snr_q75: quartiles over coordinates of |E ĝ|/sd(ĝ) per group", False),
    Protocol("mcmc", "gradbench.protocols.mcmc:mcmc", "acceptance, ess: mean ± s.e. over replicates of an estimator's HMC acceptance rate and chain effective sample size (issue 14)", False),
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
    return entry.module_of("build" if isinstance(entry, Model) else "fn")


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
        for point in importlib.metadata.entry_points(group=group):
            try:
                obj = point.load()
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"entry point {group}:{point.name} ({point.value}) failed to load: {type(exc).__name__}: {exc}") \
                    from None
            if table is None:  # families: imported for their side effects
                continue
            for entry in obj if isinstance(obj, (list, tuple)) else [obj]:
                register(entry, module=point.module)


def code_version(module: str) -> str:
    """What a cell's id records of the code that computes it: ``<dist>==<version>`` for a module of an installed
    distribution other than gradbench, else a hash of the module's source file (edits invalidate cells)."""
    return _code_version(module)


@cache
def _code_version(module: str) -> str:
    top = module.split(".")[0]
    if top != "gradbench":
        dists = importlib.metadata.packages_distributions().get(top, [])
        for dist in dists:
            try:
                return f"{dist}=={importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                pass
    mod = sys.modules.get(module)
    origin = getattr(mod, "__file__", None) if mod is not None else None
    if origin is None:  # find the source without importing it or its parent packages (validate stays torch-free)
        origin = _source_path(module)
    try:
        source = Path(origin).read_bytes() if origin else b""
    except OSError:
        return "unknown"
    if not source:
        return "unknown"
    return hashlib.sha256(source).hexdigest()[:16]


def _source_path(module: str) -> str | None:
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if not rest:
        return spec.origin
    for base in spec.submodule_search_locations or []:
        stem = Path(base).joinpath(*rest)
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                return str(candidate)
    return None


def estimator_modules(name: str, params: dict[str, Any] | None = None) -> tuple[str, ...]:
    """Modules whose source determines an estimator's output: its own module, the contract it runs on, and those of
    the registered estimators it runs inside (``Estimator.runs``, e.g. a train cell's θ- and φ-estimators)."""
    entry = ESTIMATORS[name]
    inner = [m for n in entry.runs(params or {}) for m in estimator_modules(n)]
    return tuple(dict.fromkeys([entry.module_of("fn"), "gradbench.contracts", "gradbench.target", "gradbench.core", *inner]))


def model_modules(name: str) -> tuple[str, ...]:
    entry = MODELS[name]
    return tuple(dict.fromkeys([entry.module_of("build"), *entry.modules]))


def protocol_modules(name: str) -> tuple[str, ...]:
    entry = PROTOCOLS[name]
    return tuple(dict.fromkeys([entry.module_of("fn"), *entry.modules, "gradbench.stats"]))

