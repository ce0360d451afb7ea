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
* entry points in the groups ``gradbench.models``, ``gradbench.estimators``, ``gradbench.protocols``,
  ``gradbench.families``, each pointing at a :class:`Model` / :class:`Estimator` / :class:`Protocol` /
  :class:`Family` object, a list of them, or a module that calls :func:`register` when imported;
* ``gradbench --plugin MODULE …`` (any command): the module is imported and calls :func:`register`;
* a suite's ``plugins: [my_package.my_module]``: the module is imported and calls
  :func:`register` with its entries.
A cell's id covers the code that computes it: the import closure of its entries' modules (``cell_code``), with
the source hash of each gradbench or plugin module and the version of a plugin installed as a distribution.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
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
from gradbench.protocols.spec import MIN_REPLICATES, ProtocolSpec, SideTable  # noqa: F401 — MIN_REPLICATES re-exported

if TYPE_CHECKING:
    from gradbench.core import GradSample

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

    _CODE = ("fn", "build", "params", "proposal", "compute", "target_of", "reference_of", "needs", "runs_by_name",
             "figures", "report_tables")

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
    modules: tuple[str, ...] = ()  # extra roots for cell ids: code loaded by name, which no import statement shows

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


Protocol = ProtocolSpec  # a protocol is its spec: computation and views (gradbench.protocols.spec)


def _spec(module: str) -> ProtocolSpec:
    """The ``SPEC`` of a protocol's spec module (light: specs name their code by path)."""
    return importlib.import_module(module).SPEC



_PPCA = frozenset({"exact_posterior", "real_latent", "log_prob"})


def _uivi_requires(p: dict[str, Any]) -> Capabilities:
    """uivi: reverse exact/marginal need log q; the default reverse HMC runs over ε, so it needs a continuous ε."""
    reverse = p.get("reverse", "hmc")
    return frozenset({"reparam", "implicit"} | ({"log_prob"} if reverse in ("exact", "marginal") else set())
                     | ({"mixing_density"} if reverse == "hmc" else set()))


def _semi_implicit_q(proposal: dict[str, Any]) -> Capabilities:
    """A semi-implicit q has log q only when T is linear (``hidden`` = 0)."""
    exact = not proposal.get("hidden", 0) or bool(proposal.get("n_atoms", 0))  # atoms: an exact Gaussian mixture
    continuous = not proposal.get("n_atoms", 0)  # ε ~ N(0, I): HMC over ε is possible (uivi reverse: hmc)
    return frozenset({"real_latent", "reparam", "implicit"} | ({"log_prob"} if exact else set())
                     | ({"mixing_density"} if continuous else set()))
_GAUSSIAN_Q = frozenset({"reparam", "score", "log_prob"})
_BERNOULLI_Q = frozenset({"score", "log_prob", "enumerate", "relaxed", "logits", "gumbel_noise", "state_probabilities"})
_EBM = frozenset({"energy_based"})  # p_θ(x) ∝ exp(−F_θ(x)), no per-datum latents: exact sampling / Gibbs kernels

MODELS: dict[str, Model] = {m.name: m for m in [
    Model("ppca", "gradbench.models.ppca:PPCA.synthetic", mp.PPCAParams, mp.ProposalParams,
          "probabilistic PCA: exact log-likelihood gradient, exact posterior, proposal with mismatch (δ, s)",
          _PPCA),
    Model("ppca_encoder", "gradbench.models.ppca_encoder:PPCAEncoder.synthetic", mp.PPCAEncoderParams, mp.EncoderParams,
          "PPCA with a linear-Gaussian encoder q_φ(z|x) = N(Ax+b, diag e^{2c}): exact ∇θ/∇φ ELBO; IWAE_K references estimated",
          _PPCA | _GAUSSIAN_Q | {"analytic_kl", "iwae_reference"}),
    Model("vae", "gradbench.models.vae:build", mp.VAEParams, mp.GaussianProposal,
          "VAE: z ~ N(0, I), MLP decoder (Bernoulli/Gaussian); Gaussian mean-field or amortised q; exact references by "
          "adaptive Gauss–Hermite quadrature for latent_dim ≤ 3",
          _GAUSSIAN_Q | {"real_latent", "analytic_kl", "iwae_reference"}),
    Model("sbn", "gradbench.models.sbn:build", mp.SBNParams, mp.BernoulliProposal,
          "sigmoid belief net (binary latents, 1–2 layers, linear or MLP conditionals), factorised Bernoulli q: exact "
          "references by enumerating the 2^k latent states (k ≤ 16)",
          _BERNOULLI_Q | {"binary_latent", "exact_posterior", "iwae_reference"}),
    Model("rbm", "gradbench.models.ebm:RBM.build", mp.RBMParams, mp.NoProposal,
          "binary RBM (energy-based): exact log Z, ∇θ log p(x) by enumerating ≤ 16 hidden units; synthetic or binarised digits",
          _EBM),
    Model("ising", "gradbench.models.ebm:Ising.build", mp.IsingParams, mp.NoProposal,
          "fully visible ±1 Boltzmann machine, ≤ 20 spins: exact log Z, ∇θ log p(x) by enumerating 2^n states",
          _EBM),
    # semi-implicit q
    Model("ppca_semi_implicit", "gradbench.models.semi_implicit:build_ppca", mp.PPCAParams, mp.SemiImplicitProposal,
          "PPCA with a semi-implicit q (ε ~ N(0, I_m), z|ε ~ N(Aε + b [+ MLP], diag d²)): exact ∇φ ELBO (linear T)",
          lambda p: _semi_implicit_q(p)),
    Model("vae_semi_implicit", "gradbench.models.semi_implicit:build_vae", mp.VAEParams, mp.SemiImplicitProposal,
          "VAE decoder with a semi-implicit q started at the Laplace approximation: quadrature ∇φ ELBO (linear T, k ≤ 3)",
          lambda p: _semi_implicit_q(p)),
    Model("toy2d_semi_implicit", "gradbench.models.toy2d:build", mp.Toy2DParams, mp.SemiImplicitProposal,
          "2-D banana / X-shaped density of the SIVI/UIVI papers (no data) with a semi-implicit q: quadrature ∇φ ELBO",
          lambda p: _semi_implicit_q(p)),
    # discrete latent variables
    Model("bernoulli_toy", "gradbench.models.bernoulli_toy:build", mp.BernoulliToyParams,
          mp.BernoulliToyProposal,
          "REBAR/RELAX toy: min_φ E_{b~Bern(σ(φ))} Σ_j (b_j − t)² (t = 0.499); exact ∇φ = (1 − 2t)σ(φ)(1 − σ(φ)) as phi_elbo",
          _BERNOULLI_Q | {"binary_latent"}),
    Model("categorical_vae", "gradbench.models.categorical:build", mp.CategoricalVAEParams, mp.CategoricalProposal,
          "categorical VAE (k latents × C classes; Kool et al. 2020: 2 × 10), linear or MLP decoder to Bernoulli pixels, "
          "amortised softmax encoder: exact references by enumerating the C^k states",
          frozenset({"score", "log_prob", "enumerate", "relaxed", "logits", "gumbel_noise", "state_probabilities",
                     "categorical_latent", "exact_posterior", "iwae_reference"})),
]}

_PHI_ELBO = Objective("phi", "elbo")
_SAMPLE = frozenset({"log_prob"})  # draws from q and evaluates log q (importance weights)
_REPARAM = frozenset({"reparam", "log_prob"})
_SCORE = frozenset({"score", "log_prob"})
_DISCRETE_SCORE = frozenset({"score", "log_prob", "enumerate", "logits"})  # a finite q with logits (binary or categorical)
_BINARY_SCORE = _DISCRETE_SCORE | {"binary_latent"}  # a factorised Bernoulli q
_GUMBEL = frozenset({"gumbel_noise"})  # the estimator transforms the family's uniforms itself (antithetic, relaxed)
_RELAXED = _DISCRETE_SCORE | {"relaxed"} | _GUMBEL  # and its Concrete / Gumbel-softmax relaxation


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
    Estimator("exact_sampling", _E + "ebm:exact_sampling", ep.ExactSamplingParams,
              "EBM: model term from S exact samples of p_θ by enumeration (the oracle; unbiased; cost in sweeps)", requires=_EBM),
    Estimator("cd", _E + "ebm:cd", ep.CDParams,
              "EBM: contrastive divergence CD-k from the data points (biased at finite k; cost N·k sweeps)", requires=_EBM),
    Estimator("pcd", _E + "ebm:pcd", ep.PCDParams,
              "EBM: persistent CD, S chains of a given age (explicit state; biased at finite age)", requires=_EBM),
    Estimator("coupled_gibbs", _E + "ebm:coupled_gibbs", ep.CoupledGibbsParams,
              "EBM: unbiased lag-L H_{k:m} from coupled Gibbs chains (maximal couplings of the Bernoulli conditionals)", requires=_EBM),
    # semi-implicit and MCMC-enriched families
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
    # discrete-latent ∇φ estimators (gradbench.estimators.discrete)
    Estimator("arm", _E + "discrete:arm", ep.ARMParams, "ARM ∇φ ELBO (Yin & Zhou 2019): antithetic pair, (f(b¹) − f(b²))(u − ½)",
              _PHI_ELBO, _BINARY_SCORE | _GUMBEL),
    Estimator("disarm", _E + "discrete:disarm", ep.DisARMParams, "DisARM ∇φ ELBO (Dong et al. 2020): ARM Rao–Blackwellised over the pair",
              _PHI_ELBO, _BINARY_SCORE | _GUMBEL),
    Estimator("rloo", _E + "discrete:rloo", ep.RLOOParams, "REINFORCE leave-one-out ∇φ ELBO on binary latents (Kool et al. 2019), S samples",
              _PHI_ELBO, _DISCRETE_SCORE),
    Estimator("nvil", _E + "discrete:nvil", ep.NVILParams, "NVIL ∇φ ELBO (Mnih & Gregor 2014): running mean + input-dependent baseline, warm-up steps",
              _PHI_ELBO, _DISCRETE_SCORE),
    Estimator("gumbel_softmax", _E + "discrete:gumbel_softmax", ep.RelaxedParams, "binary Concrete pathwise ∇φ, temperature τ (biased)",
              _PHI_ELBO, _RELAXED),
    Estimator("straight_through", _E + "discrete:straight_through", ep.RelaxedParams, "straight-through Gumbel ∇φ: hard forward, relaxed backward (biased)",
              _PHI_ELBO, _RELAXED),
    Estimator("rebar", _E + "discrete:rebar", ep.REBARParams, "REBAR ∇φ ELBO (Tucker et al. 2017): η, λ fixed or learned in warm-up",
              _PHI_ELBO, _BINARY_SCORE | _GUMBEL),
    Estimator("relax", _E + "discrete:relax", ep.RELAXParams, "RELAX ∇φ ELBO (Grathwohl et al. 2018): surrogate c_ψ trained in warm-up to minimise variance",
              _PHI_ELBO, _BINARY_SCORE | _GUMBEL),
    Estimator("wake_sleep", _E + "discrete:wake_sleep", ep.WakeSleepParams, "sleep-phase φ-update (Hinton et al. 1995), measured against ∇φ ELBO (biased)",
              _PHI_ELBO, _BINARY_SCORE),
    Estimator("reweighted_wake_sleep", _E + "discrete:reweighted_wake_sleep", ep.RWSParams,
              "RWS wake-φ update (Bornschein & Bengio 2015), K samples, measured against ∇φ ELBO (biased)", _PHI_ELBO, _BINARY_SCORE | _GUMBEL),
    Estimator("sum_and_sample", _E + "sum_and_sample:sum_and_sample", ep.SumAndSampleParams,
              "sum-and-sample ∇φ ELBO (Liu et al. 2019): m most probable states summed, one sampled from the rest (unbiased)",
              _PHI_ELBO, _DISCRETE_SCORE),
]}

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    _spec("gradbench.protocols.bias_spec"),
    _spec("gradbench.protocols.variance_spec"),
    _spec("gradbench.protocols.meeting_spec"),
    _spec("gradbench.protocols.wallclock_spec"),
    _spec("gradbench.protocols.snr_spec"),
    _spec("gradbench.protocols.mcmc_spec"),
    _spec("gradbench.protocols.mse_spec"),
    _spec("gradbench.protocols.paired_spec"),
]}


def required_capabilities(estimator: str, params: dict[str, Any], protocols: tuple[str, ...] | list[str] = ()) \
        -> Capabilities:
    """What a cell needs of its target: the estimator's requirements, and ``iwae_reference`` when it estimates an
    IWAE objective and a protocol of the cell compares against the reference (``bias``)."""
    entry = ESTIMATORS[estimator]
    needs = set(entry.required(params))
    if entry.objective(params).canonical().kind == "iwae" and any(PROTOCOLS[p].uses_reference for p in protocols
                                                                   if p in PROTOCOLS):
        needs.add("iwae_reference")
    return frozenset(needs)


@dataclass(frozen=True)
class CellKind(_CodeByPath):
    """A kind of cell (docs/design.md §4.1): what its computation is and what the pipeline needs to know of it. The
    pipeline (gradbench.run) asks the kind and never branches on its name.

    ``compute`` (cell, target, reference, checkpoint_dir) → (rows, side tables by name); ``params`` the schema of a
    cell's parameters given its estimator name; ``needs`` (estimator, params, protocols) → the capabilities the target
    must provide; ``runs_by_name`` (params) → registered estimators it runs besides the cell's own (their code
    counts in the cell id); ``target_of`` cell → the TargetConfig it computes on (None: the cell's own);
    ``reference_of`` cell → the key of the objective whose reference it needs, or None (None: never one);
    ``stores_target_arrays``: whether the run folder keeps the target's arrays (a training cell never builds the
    target's own θ and φ); ``side_tables``: the run-wide tables its side outputs are collected into. A kind's own
    views — ``figures`` (a list of FigureSpec) and ``report_tables`` (run → list of tables) — are drawn by the report
    beside the protocols' (a measurement cell's side tables and views are its protocols', gradbench.protocols.spec).
    """

    name: str
    compute: Callable[..., Any]
    description: str
    params: Callable[[str], type[BaseModel]]
    needs: Callable[[str, dict[str, Any], tuple[str, ...]], Capabilities]
    runs_by_name: Callable[[dict[str, Any]], tuple[str, ...]]
    target_of: Callable[[Any], Any] | None = None
    reference_of: Callable[[Any], str | None] | None = None
    stores_target_arrays: bool = True
    replicate_scaled: bool = True  # its cost grows linearly in the replicates (``gradbench validate --estimate`` probes it)
    own_params: bool = True  # False: its parameters are its estimator's (``gradbench show`` lists them there)
    side_tables: tuple[SideTable, ...] = ()
    figures: list[Any] | None = None
    report_tables: Callable[[Any], list[Any]] | None = None


def objective_key(estimator: str, params: dict[str, Any]) -> str:
    """The key of the objective an estimator with these parameters estimates (``phi_iwae8``, ``theta_log_marginal``)."""
    return ESTIMATORS[estimator].objective(params).canonical().key


def measured_objective(cell: Any) -> str | None:
    """The key of the objective a measurement cell's protocols compare against — its estimator's — or None when no
    protocol of the cell uses a reference."""
    if not any(PROTOCOLS[name].uses_reference for name in cell.protocols):
        return None
    return objective_key(cell.estimator, cell.estimator_params)


CELL_KINDS: dict[str, CellKind] = {k.name: k for k in [
    CellKind("measure", "gradbench.protocols.measure:run_cell",
             "an estimator run in replicate blocks on a fixed target, measured by the suite's protocols "
             "(estimators: + protocols:)",
             lambda name: ESTIMATORS[name].params, lambda name, p, protocols: required_capabilities(name, p, protocols),
             lambda p: (), reference_of=lambda cell: measured_objective(cell), own_params=False),
    # a measurement cell's side tables are its protocols'
    CellKind("train", "gradbench.training.cell:compute",
             "a training run from a suite's train: block (arms × seeds × settings): θ-, φ- and warm-up estimators, "
             "held-out log p(x) or IWAE bound, learning curves",
             lambda name: resolve("gradbench.training.params:TrainParams"),
             lambda name, p, protocols: resolve("gradbench.training.params:requires")(p),
             "gradbench.training.params:runs", target_of="gradbench.training.cell:target_of",
             stores_target_arrays=False, replicate_scaled=False, side_tables=(SideTable("curves", "curves.parquet"),),
             figures="gradbench.training.figures:TRAIN_FIGURES", report_tables="gradbench.training.figures:train_tables"),
]}


@dataclass(frozen=True)
class Family(_CodeByPath):
    """A variational family as ``gradbench list families`` / ``show`` describe it: chosen by a model's ``proposal``
    block (``family: NAME`` where the block has that key), with the capabilities its class declares."""

    name: str
    impl: str  # "module:Class" of the contract-v2 family (gradbench.contracts.Family); not imported by list/show
    description: str
    proposal: type[BaseModel]  # the proposal block that selects and shapes it; or its "module:attr"
    capabilities: Capabilities = frozenset()
    models: tuple[str, ...] = ()  # models whose proposal block can choose it


_F = "gradbench.families."
_GAUSSIAN_FAMILY = frozenset({"reparam", "score", "log_prob", "analytic_kl"})
_BERNOULLI_FAMILY = frozenset({"score", "log_prob", "enumerate", "relaxed", "logits", "gumbel_noise"})
FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("gaussian_mean_field", _F + "gaussian:GaussianMeanField",
           "q(z|x_n) = N(m_n, diag s_n²), free mean and log-std per data point, started at the Laplace approximation",
           mp.GaussianProposal, _GAUSSIAN_FAMILY, ("vae",)),
    Family("gaussian_encoder", _F + "gaussian:GaussianEncoder",
           "amortised q_φ(z|x) = N(μ_φ(x), diag σ_φ(x)²) from an MLP (encoder_hidden), fitted to the Laplace approximation",
           mp.GaussianProposal, _GAUSSIAN_FAMILY, ("vae",)),
    Family("bernoulli_encoder", _F + "bernoulli:BernoulliEncoder",
           "amortised factorised Bernoulli q_φ(z|x) = Π_j Bern(σ(ℓ_j(x))), ℓ linear or a tanh MLP; uniform noise u, z = 1[u < σ(ℓ)]",
           mp.BernoulliProposal, _BERNOULLI_FAMILY, ("sbn",)),
    Family("bernoulli_mean_field", _F + "bernoulli:BernoulliMeanField",
           "factorised Bernoulli with free logits per data point; uniform noise u, z = 1[u < σ(ℓ)]",
           mp.BernoulliProposal, _BERNOULLI_FAMILY, ("sbn", "bernoulli_toy")),
    Family("categorical_encoder", _F + "categorical:CategoricalEncoder",
           "amortised q_φ(z|x) = Π_j Cat(softmax(ℓ_j(x))), ℓ linear or a tanh MLP; Gumbel-max draws from C uniforms per latent",
           mp.CategoricalProposal, _BERNOULLI_FAMILY, ("categorical_vae",)),
    Family("semi_implicit", _F + "semi_implicit:SemiImplicitGaussian",
           "ε ~ N(0, I_m) (or n_atoms atoms), z|ε ~ N(Aε + b [+ MLP(ε)], diag d²); log q exact when linear (hidden: 0)",
           mp.SemiImplicitProposal, frozenset({"reparam", "implicit", "log_prob", "mixing_density"}),
           ("ppca_semi_implicit", "vae_semi_implicit", "toy2d_semi_implicit")),
]}


# -- plugins -----------------------------------------------------------------------------------
ENTRY_POINT_GROUPS = {"gradbench.models": MODELS, "gradbench.estimators": ESTIMATORS, "gradbench.protocols": PROTOCOLS,
                      "gradbench.families": FAMILIES}
PLUGIN_MODULES: dict[str, str] = {}  # entry name → module that registered it (for cell ids)


class PluginError(Exception):
    """A plugin that cannot be loaded or registers something invalid (one line)."""


def register(*entries: Model | Estimator | Protocol | Family, module: str | None = None) -> None:
    """Add entries to the registry (a plugin module calls this at import). A name already taken is refused."""
    for entry in entries:
        table: dict[str, Any] = MODELS if isinstance(entry, Model) else ESTIMATORS if isinstance(entry, Estimator) \
            else PROTOCOLS if isinstance(entry, Protocol) else FAMILIES if isinstance(entry, Family) \
            else None  # type: ignore[assignment]
        if table is None:
            raise PluginError(f"cannot register {entry!r}: expected a registry.Model, Estimator, Protocol or Family")
        owner = module or _defining_module(entry)
        if entry.name in table and PLUGIN_MODULES.get(entry.name) != owner:
            if table[entry.name] is entry:
                continue
            raise PluginError(f"plugin {owner}: name {entry.name!r} is already registered")
        table[entry.name] = entry
        PLUGIN_MODULES[entry.name] = owner


def _defining_module(entry: Any) -> str:
    if isinstance(entry, Family):
        return entry.impl.partition(":")[0]
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
    for group in ENTRY_POINT_GROUPS:
        for point in importlib.metadata.entry_points(group=group):
            try:
                obj = point.load()
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"entry point {group}:{point.name} ({point.value}) failed to load: {type(exc).__name__}: {exc}") \
                    from None
            if isinstance(obj, type(sys)):  # a module, imported for its side effects (it may call register)
                continue
            for entry in obj if isinstance(obj, (list, tuple)) else [obj]:
                register(entry, module=point.module)


def code_version(module: str) -> str:
    """What a cell's id records of one module: ``<dist>==<version>`` for a module of an installed distribution other
    than gradbench, else a hash of the module's source file (edits invalidate cells)."""
    return _code_version(module)


@cache
def _code_version(module: str) -> str:
    dist = _distribution(module)
    if dist is not None:
        return dist
    source = _source(module)
    return hashlib.sha256(source).hexdigest()[:16] if source else "unknown"


def _distribution(module: str) -> str | None:
    """``<dist>==<version>`` of the installed distribution (other than gradbench) that provides ``module``."""
    top = module.split(".")[0]
    if top == "gradbench":
        return None
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def _source(module: str) -> bytes:
    """The source of ``module`` (empty when it has none), found without importing it when it is not imported yet
    (so that ``validate`` stays torch-free)."""
    mod = sys.modules.get(module)
    origin = getattr(mod, "__file__", None) if mod is not None else None
    if origin is None:
        origin = _source_path(module)
    try:
        return Path(origin).read_bytes() if origin and origin.endswith(".py") else b""
    except OSError:
        return b""


def _source_path(module: str) -> str | None:
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
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


# -- the code a cell depends on: the import closure of its entries ------------------------------
NOT_FOLLOWED = frozenset({"gradbench.registry"})  # names code, computes nothing (by-name runs: Estimator.runs)


def _is_module(name: str) -> bool:
    return name in sys.modules or _source_path(name) is not None


@cache
def module_imports(module: str) -> frozenset[str]:
    """The modules ``module``'s source imports that are followed for cell ids: gradbench modules and modules of
    the same top-level package as ``module`` (a plugin's own helpers), read with :mod:`ast` (nothing is imported).

    Counted: ``import a.b``, ``from a import b`` (``a.b`` when it is a module, else ``a``), relative imports, imports
    inside functions (lazy imports compute too), parent packages (their ``__init__`` runs on import), and string
    constants that name such a module exactly (``importlib.import_module("gradbench.target")``). Not counted:
    imports under ``if TYPE_CHECKING:`` (annotations only) and :data:`NOT_FOLLOWED`.
    """
    source = _source(module)
    if not source:
        return frozenset()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return frozenset()
    top = module.split(".")[0]
    is_package = (_source_path(module) or "").endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        if name.split(".")[0] in ("gradbench", top) and name != module and name not in NOT_FOLLOWED:
            found.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if _is_module(sub) else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value) \
                and node.value.split(".")[0] in ("gradbench", top) and _is_module(node.value):
            add(node.value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    for name in list(found):  # importing a.b.c runs a/__init__ and a/b/__init__
        parts = name.split(".")
        for i in range(1, len(parts)):
            add(".".join(parts[:i]))
    return frozenset(found)


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_closure(roots: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``roots`` and every module they import, transitively (:func:`module_imports`), sorted; a module of an installed
    distribution other than gradbench is a leaf (its version is recorded, not its source)."""
    seen: set[str] = set()
    stack = [r for r in roots if r not in NOT_FOLLOWED]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if _distribution(name) is None:
            stack += module_imports(name) - seen
    return tuple(sorted(seen))


def cell_roots(model: str, estimator: str, params: dict[str, Any] | None, protocols: tuple[str, ...] | list[str],
               kind: str = "measure") -> tuple[str, ...]:
    """The modules a cell's entries are defined in (the model's build — the family it may choose is imported by it —,
    the kind's computation, the estimator and those the estimator or the kind runs by name, the protocols) and the
    plugin modules that registered any of them."""
    m, k, p = MODELS[model], CELL_KINDS[kind], [PROTOCOLS[name] for name in protocols]
    own = estimator_modules(estimator, params) if estimator in ESTIMATORS else ()
    roots = [m.module_of("build"), *m.modules, k.module_of("compute"), *own,
             *(r for n in k.runs_by_name(params or {}) for r in estimator_modules(n)),
             *(r for proto in p for r in (proto.module_of("fn"), *proto.modules))]
    owners = [PLUGIN_MODULES.get(name) for name in (model, estimator, *protocols)]
    return tuple(dict.fromkeys([*roots, *(o for o in owners if o)]))


def cell_code(model: str, estimator: str, params: dict[str, Any] | None,
              protocols: tuple[str, ...] | list[str], kind: str = "measure") -> tuple[tuple[str, str], ...]:
    """``(module, version or source hash)`` of every module in the import closure of the cell's entries: what a cell's
    id covers of the code that computes it. Editing any of them, or upgrading a plugin's distribution, re-runs it."""
    return tuple((name, code_version(name)) for name in import_closure(cell_roots(model, estimator, params, protocols,
                                                                                  kind)))


def estimator_modules(name: str, params: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The modules an estimator is defined in: its own and those of the registered estimators it runs by name
    (``Estimator.runs``)."""
    entry = ESTIMATORS[name]
    inner = [m for n in entry.runs(params or {}) for m in estimator_modules(n)]
    return tuple(dict.fromkeys([entry.module_of("fn"), *inner]))
