"""Enumerated references for models with binary latents z ∈ {0,1}ᵏ (k ≤ 16; docs/design.md §7.2) or categorical
latents z ∈ {0..C−1}ᵏ (Cᵏ ≤ 2¹⁶ states, stored one-hot flattened [..., k·C]; discrete latents).

Every quantity is a finite sum over the S = 2ᵏ (or Cᵏ) latent states of one data point, evaluated for all
N data points at once (the state axis is vectorised and split into chunks only to bound memory):

* log p(x) = Σ_n logsumexp_z log p_θ(x_n, z).
* ∇θ log p(x) = Σ_n Σ_z p_θ(z | x_n) ∇θ log p_θ(x_n, z). This is the autograd of the logsumexp,
  written in the form that chunks: ∇ logsumexp_s f_s = Σ_s softmax(f)_s ∇f_s, so a first pass
  computes the posterior weights and a second pass differentiates Σ w̃ log p with w̃ held fixed
  (Fisher's identity, exactly).
* ELBO = Σ_n Σ_z q_φ(z | x_n) [log p_θ(x_n, z) − log q_φ(z | x_n)], and ∇θ ELBO, ∇φ ELBO by autograd
  of that enumerated sum (additive over states, hence over chunks).
* IWAE_K = Σ_n E_{z_{1:K} ~ q} log (1/K Σ_k w_k), w_k = p(x_n, z_k)/q(z_k | x_n): enumerated over the
  S^K tuples when S^K N is small (:data:`IWAE_ENUMERATION_LIMIT`), otherwise *estimated* by a
  high-budget unbiased run (:func:`estimated_iwae_gradient`): for θ the self-normalised gradient
  Σ_k w̃_k ∇θ log p(x, z_k), which is IWAE's own θ-gradient (q does not depend on θ); for φ the
  score-function gradient with VIMCO's leave-one-out baselines (Mnih & Rezende 2016),
      ĝ_φ = Σ_n Σ_k [ (L − L_{−k}) − w̃_k ] ∇φ log q_φ(z_k | x_n),
  L = log (1/K Σ_j w_j), L_{−k} the same with log w_k replaced by the mean of the other K−1 log-weights
  (independent of z_k, so a valid baseline), and −w̃_k ∇φ log q the pathwise term ∇φ L at fixed z.
* Exact posterior sampling: the enumerated posterior table and an inverse-CDF categorical draw
  (:func:`sample_table`), which makes the ``oracle`` estimator run on any enumerable model.

States are ordered as in :meth:`gradbench.contracts.LatentSpace.states`: state i is the binary
expansion of i, bit 0 first; categorical: the base-C expansion of i, digit 0 (latent 0) first, one-hot
(:func:`latent_states`).

References are built by :func:`reference_builders` as ``(target, objective) -> Reference`` and are
always computed in float64 on the target's device (the exact gradient of the target's rounded
parameters). Kinds: ``enumerated`` (exact up to float64 rounding), ``estimated`` (with the
per-coordinate Monte Carlo standard error in ``stderr``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from gradbench.contracts import Family, LatentSpace, Model, Objective, Params, Target
from gradbench.core import Reference, per_replicate_grad
from gradbench.models.params import MAX_ENUMERATED_LATENTS
from gradbench.references.estimated import streaming_reference
from gradbench.seeding import derive_seed, make_generator

CHUNK_ELEMENTS = 1 << 22  # states × data points × widest layer per chunk (32 MiB of float64)
IWAE_ENUMERATION_LIMIT = 1 << 18  # enumerate IWAE_K over the S^K tuples when S^K · N ≤ this
REFERENCE_BLOCK_ELEMENTS = 1 << 21  # replicates × K × N per block of an estimated reference


# -- states ----------------------------------------------------------------------------------
def _state_range(start: int, stop: int | None, S: int) -> int:
    """``stop`` (default S) after checking 0 ≤ start ≤ stop ≤ S: an index past S would wrap to a repeated state."""
    stop = S if stop is None else stop
    if not 0 <= start <= stop <= S:
        raise ValueError(f"state range {start}..{stop} is outside 0..{S}")
    return stop


def binary_states(k: int, start: int = 0, stop: int | None = None, dtype: torch.dtype = torch.float64,
                  device: str | torch.device = "cpu") -> Tensor:
    """States start..stop−1 of {0,1}ᵏ as a [stop − start, k] 0/1 tensor (state i = bits of i, bit 0 first)."""
    if not 0 < k <= MAX_ENUMERATED_LATENTS:
        raise ValueError(f"enumeration needs 1 ≤ k ≤ {MAX_ENUMERATED_LATENTS} binary latents, got k = {k}")
    stop = _state_range(start, stop, 2**k)
    idx = torch.arange(start, stop, device=device)
    return ((idx.unsqueeze(-1) >> torch.arange(k, device=device)) & 1).to(dtype)


def categorical_states(k: int, C: int, start: int = 0, stop: int | None = None, dtype: torch.dtype = torch.float64,
                       device: str | torch.device = "cpu") -> Tensor:
    """States start..stop−1 of {0..C−1}ᵏ one-hot and flattened, [stop − start, k·C]: state i has class
    (i // Cʲ) mod C for latent j (digit 0 first)."""
    if k < 1 or C < 2 or C**k > 2**MAX_ENUMERATED_LATENTS:
        raise ValueError(f"enumeration needs C^k ≤ 2^{MAX_ENUMERATED_LATENTS} categorical states, got C = {C}, k = {k}")
    stop = _state_range(start, stop, C**k)
    idx = torch.arange(start, stop, device=device)
    digits = (idx.unsqueeze(-1) // C ** torch.arange(k, device=device)) % C  # [S, k]
    return torch.nn.functional.one_hot(digits, C).reshape(len(idx), k * C).to(dtype)


def n_states(space: LatentSpace) -> int:
    """Latent states of one data point: 2ᵏ (binary) or Cᵏ (categorical)."""
    S = space.n_states()
    if S is None:
        raise ValueError(f"cannot enumerate a {space.kind} latent space")
    return S


def latent_states(space: LatentSpace, start: int = 0, stop: int | None = None, dtype: torch.dtype = torch.float64,
                  device: str | torch.device = "cpu") -> Tensor:
    """States start..stop−1 of a binary ([·, k] 0/1) or categorical ([·, k·C] one-hot) latent space."""
    if space.kind == "categorical":
        return categorical_states(space.dim, int(space.classes or 0), start, stop, dtype, device)
    if space.kind != "binary":
        raise ValueError(f"cannot enumerate a {space.kind} latent space")
    return binary_states(space.dim, start, stop, dtype, device)


def state_chunks(S: int, n_data: int, width: int, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges covering the S states, each with ≤ chunk_elements / (N · width) states."""
    step = max(1, min(S, chunk_elements // max(1, n_data * width)))
    for start in range(0, S, step):
        yield start, min(S, start + step)


def _width(model: Model, x: Tensor) -> int:
    return max(x.shape[-1], model.latent.dim * (model.latent.classes or 1), int(getattr(model, "hidden", 0) or 0))


def _chunks(model: Model, x: Tensor) -> Iterator[tuple[int, int]]:
    return state_chunks(n_states(model.latent), x.shape[0], _width(model, x))


def _expand(states: Tensor, n: int) -> Tensor:
    """[S, k] → [S, N, k] (one copy of each state per data point)."""
    return states.unsqueeze(1).expand(states.shape[0], n, states.shape[1])


# -- tables and marginals --------------------------------------------------------------------
@torch.no_grad()
def log_joint_table(model: Model, theta: Params, x: Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """log p_θ(x_n, z_s) for every state s and data point n: [S, N]."""
    space, N = model.latent, x.shape[0]
    chunks = state_chunks(n_states(space), N, _width(model, x), chunk_elements)
    parts = [model.log_joint(theta, x, _expand(latent_states(space, a, b, x.dtype, x.device), N)) for a, b in chunks]
    return torch.cat(parts, 0)


def log_marginal(model: Model, theta: Params, x: Tensor) -> Tensor:
    """log p(x) = Σ_n logsumexp_z log p(x_n, z) (a scalar)."""
    return torch.logsumexp(log_joint_table(model, theta, x), 0).sum()


def posterior_table(model: Model, theta: Params, x: Tensor) -> Tensor:
    """p_θ(z_s | x_n): [2ᵏ, N], each column sums to 1."""
    return torch.softmax(log_joint_table(model, theta, x), 0)


def posterior_marginals(model: Model, theta: Params, x: Tensor) -> Tensor:
    """P(z_j = 1 | x_n) = Σ_s p(z_s | x_n) z_sj: [N, k] (categorical: P(z_j = c | x_n) [N, k·C])."""
    post = posterior_table(model, theta, x)
    return post.T @ latent_states(model.latent, dtype=post.dtype, device=post.device)


def sample_table(log_table: Tensor, k: int | LatentSpace, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """z [*batch, N, k] with z_n ~ softmax(log_table[:, n]) over the 2ᵏ states (inverse CDF, one uniform per draw);
    ``k`` a LatentSpace: its states ([*batch, N, k·C] one-hot for categorical latents)."""
    S, N = log_table.shape
    cdf = torch.softmax(log_table, 0).T.cumsum(-1).contiguous()  # [N, S]
    B = math.prod(batch)
    u = torch.rand(N, B, generator=gen, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(S - 1)  # [N, B]: first s with cdf_s > u
    if isinstance(k, LatentSpace):
        states = latent_states(k, dtype=log_table.dtype, device=log_table.device)
        return states[idx.T].reshape(*batch, N, states.shape[-1])
    bits = (idx.T.unsqueeze(-1) >> torch.arange(k, device=idx.device)) & 1  # [B, N, k]
    return bits.to(log_table.dtype).reshape(*batch, N, k)


def sample_posterior(model: Model, theta: Params, x: Tensor, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Exact draws z ~ p_θ(z | x_n) [*batch, N, k] from the enumerated posterior."""
    return sample_table(log_joint_table(model, theta, x), model.latent, batch, gen)


# -- gradients -------------------------------------------------------------------------------
def _accumulate(total: Params | None, part: Params) -> Params:
    return dict(part) if total is None else {name: total[name] + part[name] for name in total}


def log_marginal_and_grad(model: Model, theta: Params, x: Tensor) -> tuple[Tensor, Params]:
    """(log p(x), ∇θ log p(x)) by enumeration; ∇θ = Σ_{n,s} p(z_s | x_n) ∇θ log p(x_n, z_s)."""
    N = x.shape[0]
    log_px = torch.logsumexp(log_joint_table(model, theta, x), 0)  # [N]

    def weighted(th: Params, states: Tensor) -> Tensor:
        lj = model.log_joint(th, x, _expand(states, N))  # [S_chunk, N]
        return (torch.exp(lj - log_px).detach() * lj).sum()

    grad: Params | None = None
    for a, b in _chunks(model, x):
        grad = _accumulate(grad, torch.func.grad(weighted)(theta, latent_states(model.latent, a, b, x.dtype, x.device)))
    assert grad is not None
    return log_px.sum(), grad


def elbo_and_grads(model: Model, family: Family, theta: Params, phi: Params, x: Tensor) -> tuple[Tensor, Params, Params]:
    """(ELBO, ∇θ ELBO, ∇φ ELBO) by autograd of Σ_{n,s} q_φ(z_s | x_n) [log p_θ(x_n, z_s) − log q_φ(z_s | x_n)]."""
    N = x.shape[0]

    def elbo_chunk(th: Params, ph: Params, states: Tensor) -> Tensor:
        z = _expand(states, N)
        log_q = family.log_prob(ph, x, z)
        return (torch.exp(log_q) * (model.log_joint(th, x, z) - log_q)).sum()

    value = torch.zeros((), dtype=x.dtype, device=x.device)
    g_theta: Params | None = None
    g_phi: Params | None = None
    for a, b in _chunks(model, x):
        states = latent_states(model.latent, a, b, x.dtype, x.device)
        (gt, gp), v = torch.func.grad_and_value(elbo_chunk, argnums=(0, 1))(theta, phi, states)
        value, g_theta, g_phi = value + v, _accumulate(g_theta, gt), _accumulate(g_phi, gp)
    assert g_theta is not None and g_phi is not None
    return value, g_theta, g_phi


def iwae_enumerable(S: int, K: int, n_data: int) -> bool:
    """Whether the S^K tuples of IWAE_K over S latent states fit :data:`IWAE_ENUMERATION_LIMIT` (S^K · N ≤ it, in exact
    integers: at the edge, logarithms round either way)."""
    return S**K * n_data <= IWAE_ENUMERATION_LIMIT


def iwae_and_grads(model: Model, family: Family, theta: Params, phi: Params, x: Tensor, K: int) -> tuple[Tensor, Params, Params]:
    """(IWAE_K, ∇θ IWAE_K, ∇φ IWAE_K) by enumerating the S^K tuples (z_1..z_K) of every data point:
    IWAE_K = Σ_n Σ_{s_1..s_K} Π_k q(z_{s_k} | x_n) · log (1/K Σ_k w_{s_k, n}); autograd in θ and φ."""
    N, S_all = x.shape[0], n_states(model.latent)
    if not iwae_enumerable(S_all, K, N):
        raise ValueError(f"IWAE_{K} over {S_all} states per point is too large to enumerate ({S_all ** K} tuples)")
    states = _expand(latent_states(model.latent, dtype=x.dtype, device=x.device), N)
    S = states.shape[0]
    grids = torch.meshgrid(*([torch.arange(S, device=x.device)] * K), indexing="ij")
    tuples = torch.stack([g.reshape(-1) for g in grids], -1)  # [S^K, K]

    def iwae(th: Params, ph: Params) -> Tensor:
        log_q = family.log_prob(ph, x, states)  # [S, N]
        log_w = model.log_joint(th, x, states) - log_q
        bound = torch.logsumexp(log_w[tuples], 1) - math.log(K)  # [S^K, N]
        return (torch.exp(log_q[tuples].sum(1)) * bound).sum()

    (gt, gp), value = torch.func.grad_and_value(iwae, argnums=(0, 1))(theta, phi)
    return value, gt, gp


def vimco_coefficients(log_w: Tensor) -> Tensor:
    """c_k = (L − L_{−k}) − w̃_k for log_w [..., K, N] (dimension −2 is k): the φ-score coefficients of
    the unbiased VIMCO estimator of ∇φ IWAE_K (module docstring)."""
    K = log_w.shape[-2]
    L = torch.logsumexp(log_w, -2, keepdim=True)  # the −log K cancels in L − L_{−k}
    loo_mean = (log_w.sum(-2, keepdim=True) - log_w) / (K - 1)  # [..., K, N]: mean of the others
    eye = torch.eye(K, dtype=torch.bool, device=log_w.device).unsqueeze(-1)  # [K(k), K(j), 1]
    replaced = torch.where(eye, loo_mean.unsqueeze(-2), log_w.unsqueeze(-3))  # [..., K(k), K(j), N]
    L_loo = torch.logsumexp(replaced, -2)  # [..., K, N]
    return (L - L_loo) - torch.softmax(log_w, -2)


def estimated_iwae_gradient(target: Target, objective: Objective, replicates: int, seed: int) -> Reference:
    """∇θ or ∇φ IWAE_K estimated from ``replicates`` i.i.d. replicates of an unbiased estimator (module
    docstring), in blocks; value = mean, stderr = per-coordinate s.d. / √replicates."""
    K, N = objective.K, target.n_data
    if K < 2:
        raise ValueError("estimated IWAE references need K ≥ 2 (K = 1 is the enumerated ELBO)")
    gen = make_generator(seed, target.x.device)
    block = max(1, REFERENCE_BLOCK_ELEMENTS // (K * N))
    family, x = target.family, target.x
    def draw(B: int) -> Tensor:
        z, log_q = target.sample_proposal((B, K), gen)  # [B, K, N, k]
        log_w = target.log_joint(z) - log_q
        if objective.wrt == "theta":
            return target.weighted_grad_log_joint(z, torch.softmax(log_w, 1))
        coeff = vimco_coefficients(log_w)

        def surrogate(ph: Params, z1: Tensor, c1: Tensor) -> Tensor:
            return (c1 * family.log_prob(ph, x, z1)).sum()

        return target.phi_layout.flatten(per_replicate_grad(surrogate, target.phi, z, coeff), batch=(B,))

    return streaming_reference(draw, replicates, block)  # mean, s.e. and covariance (two-sample bias tests)


# -- references as (target, objective) -> Reference -------------------------------------------
def _float64(target: Target) -> tuple[Params, Params, Tensor]:
    f64 = lambda p: {n: t.detach().to(torch.float64) for n, t in p.items()}
    return f64(target.theta), f64(target.phi), target.x.to(torch.float64)


def log_marginal_reference(target: Target, objective: Objective) -> Reference:
    """∇θ log p(x), enumerated."""
    theta, _, x = _float64(target)
    _, grad = log_marginal_and_grad(target.model, theta, x)
    return Reference(target.layout.flatten(grad), kind="enumerated")


def elbo_reference(target: Target, objective: Objective) -> Reference:
    """∇θ ELBO or ∇φ ELBO, enumerated."""
    theta, phi, x = _float64(target)
    _, gt, gp = elbo_and_grads(target.model, target.family, theta, phi, x)
    if objective.wrt == "theta":
        return Reference(target.layout.flatten(gt), kind="enumerated")
    return Reference(target.phi_layout.flatten(gp), kind="enumerated")


def iwae_reference(replicates: int) -> Callable[[Target, Objective], Reference]:
    """∇θ/∇φ IWAE_K: enumerated over the K-tuples when small enough, else estimated with ``replicates``
    replicates and a seed derived from the target's seed and the objective (computed once per target)."""

    def build(target: Target, objective: Objective) -> Reference:
        if objective.kind != "iwae" or objective.K < 2:
            return elbo_reference(target, Objective(objective.wrt, "elbo"))
        if iwae_enumerable(n_states(target.model.latent), objective.K, target.n_data):
            theta, phi, x = _float64(target)
            _, gt, gp = iwae_and_grads(target.model, target.family, theta, phi, x, objective.K)
            flat = target.layout.flatten(gt) if objective.wrt == "theta" else target.phi_layout.flatten(gp)
            return Reference(flat, kind="enumerated")
        theta, phi, x = _float64(target)
        t64 = target.at(theta=theta, phi=phi, x=x)  # the same target in float64
        return estimated_iwae_gradient(t64, objective, replicates, derive_seed("iwae_reference", target.seed, objective.key))

    return build


def reference_builders(iwae_replicates: int = 20_000) -> dict[str, Callable[[Target, Objective], Reference]]:
    """The builders a ComposedTarget of an enumerable model takes: theta, theta_elbo, phi_elbo, theta_iwae, phi_iwae."""
    iwae = iwae_reference(iwae_replicates)
    return {"theta": log_marginal_reference, "theta_elbo": elbo_reference, "phi_elbo": elbo_reference,
            "theta_iwae": iwae, "phi_iwae": iwae}
