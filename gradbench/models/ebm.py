"""Energy-based models with exact partition functions: a binary RBM and a fully visible Ising model.

An EBM is p_θ(x) = exp(−F_θ(x)) / Z_θ with free energy F. Its log-likelihood gradient, summed over
N data points, is (docs/design.md §5.7)
    ∇θ log p(x) = −Σ_n ∇θ F(x_n) + N E_{p_θ(x′)}[∇θ F(x′)];
the first (data) term is exact and cheap, the second (model) term is what estimators estimate.

**RBM** (Smolensky 1986; Hinton 2002), visible v ∈ {0,1}^{n_v}, hidden h ∈ {0,1}^{n_h},
energy E(v, h) = −vᵀWh − bᵀv − cᵀh, θ = (W [n_v, n_h], b [n_v], c [n_h]). Summing h out,
    F(v) = −bᵀv − Σ_j softplus(c_j + (vW)_j),
    −∇F(v) = (v σ(c + vW)ᵀ, v, σ(c + vW)).
Summing v out instead, p(h) ∝ exp(cᵀh + Σ_i softplus(b_i + (Wh)_i)), so with n_h ≤ 16 the
partition function is exact by enumerating the 2^{n_h} hidden states:
    log Z = logsumexp_h [cᵀh + Σ_i softplus(b_i + (Wh)_i)],
and the model expectation E_p[−∇F] = (E[v hᵀ], E[v], E[h]) with E[v | h] = σ(b + Wh):
    E[v hᵀ] = Σ_h p(h) σ(b + Wh) hᵀ,  E[v] = Σ_h p(h) σ(b + Wh),  E[h] = Σ_h p(h) h.
Exact samples: h ~ p(h) by inverse CDF over the enumerated table, then v | h ~ Bern(σ(b + Wh)).
Block Gibbs: h | v ~ Bern(σ(c + vW)), v | h ~ Bern(σ(b + Wh)) (one sweep = both half-steps).

**Ising** (a fully visible Boltzmann machine; Ackley, Hinton & Sejnowski 1985), spins s ∈ {−1, +1}^n
(±1, not {0,1}), n ≤ 20, couplings J symmetric with zero diagonal and fields h:
    −F(s) = Σ_{i<j} J_ij s_i s_j + hᵀs,   θ = (J_{i<j} in row-major upper-triangle order, h),
    −∇F(s) = ((s_i s_j)_{i<j}, s);  Z = Σ over all 2^n states (enumerated in chunks).
Single-site Gibbs: P(s_i = +1 | s_{−i}) = σ(2 (h_i + Σ_j J_ij s_j)); one sweep is a systematic scan
i = 0..n−1.

Gibbs sweeps are deterministic functions ``sweep(state, u)`` of one uniform per unit: a unit is set
to its "on" value when u < P(on | rest). Feeding two chains the *same* uniforms couples every
Bernoulli conditional maximally (for two-point laws the common-uniform coupling attains
P(equal) = 1 − |p − q| = 1 − TV), and the coupled sweep is faithful: equal states stay equal.

Temperature. For ``rbm`` with synthetic data, W, b, c are i.i.d. N(0, weight_scale²), i.e. a standard
normal RBM at inverse temperature β = weight_scale. For ``ising``, J_ij ~ N(0, weight_scale²/n)
(Sherrington–Kirkpatrick scaling, glassy near weight_scale ≈ 1) and h_i ~ N(0, (weight_scale ×
field_scale)²), again β = weight_scale. For ``digits``, b is the logit of the (clipped) data
means (Hinton 2010, "A practical guide to training RBMs", §8), c = 0 and W ~ N(0, weight_scale²).
With ``theta_seed`` set, the base parameters come from that seed alone, so a weight_scale grid
is a temperature sweep of one model (otherwise every grid point is a fresh draw).
Data are exact samples from the model (``synthetic``) or the first ``n_data`` of a seeded
permutation of the 1797 sklearn 8×8 digits, binarised at pixel/16 > 0.5 (``threshold``) or by
Bernoulli(pixel/16) draws from the target's seed (``dynamic``).

References, log Z and log p(x) are computed in float64 whatever the target's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import softplus

from gradbench.core import ParamGroup, ParamLayout, Reference
from gradbench.models.params import MAX_HIDDEN, MAX_SPINS, IsingParams, NoProposal, RBMParams
from gradbench.seeding import make_generator

ENUM_CHUNK = 1 << 16  # Ising states per enumeration chunk




def _theta_generator(theta_seed: int | None, gen: torch.Generator) -> torch.Generator:
    return gen if theta_seed is None else make_generator(theta_seed)


def _cast(t: Tensor, dtype: torch.dtype, device: str | torch.device) -> Tensor:
    return t.to(dtype=dtype, device=device)


def _bits(idx: Tensor, n: int) -> Tensor:
    """Binary digits of integer indices [M] → [M, n] in {0, 1} (most significant first)."""
    shifts = torch.arange(n - 1, -1, -1, device=idx.device)
    return ((idx.unsqueeze(-1) >> shifts) & 1)


def _inverse_cdf_index(cdf: Tensor, u: Tensor) -> Tensor:
    """Index j with cdf_{j−1} < u·cdf_last ≤ cdf_j (cdf non-decreasing, unnormalised is fine)."""
    idx = torch.searchsorted(cdf, (u * cdf[-1]).contiguous())
    return idx.clamp_max(cdf.shape[0] - 1)


# -- RBM ---------------------------------------------------------------------------------------
@dataclass
class RBM:
    """A binary RBM at θ = (W, b, c) with data x [N, n_v] in {0, 1}."""

    capabilities = frozenset({"energy_based"})

    W: Tensor
    b: Tensor
    c: Tensor
    x: Tensor
    _table: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n_v, n_h = self.W.shape
        if n_h > MAX_HIDDEN:
            raise ValueError(f"n_hidden = {n_h} > {MAX_HIDDEN}: the partition function would not be enumerable")
        if self.x.ndim != 2 or self.x.shape[1] != n_v:
            raise ValueError(f"data must have shape [N, {n_v}], got {tuple(self.x.shape)}")
        if not bool(((self.x == 0) | (self.x == 1)).all()):
            raise ValueError("RBM data must be binary (0/1)")
        self.layout = ParamLayout((ParamGroup("W", (n_v, n_h)), ParamGroup("b", (n_v,)), ParamGroup("c", (n_h,))))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, params: RBMParams, proposal: NoProposal, seed: int, dtype: torch.dtype = torch.float64,
              device: str | torch.device = "cpu", data: np.ndarray | None = None) -> RBM:
        """Parameters (and data, unless given) from ``seed``, drawn in float64 on the CPU, then cast."""
        gen = make_generator(seed)
        f64 = torch.float64
        n_v, n_h, beta = params.n_visible, params.n_hidden, params.weight_scale
        if params.data == "digits":  # the built-in permutation, or the rows of a suite's ``data:`` (train split)
            x = digits(params.n_data, params.binarize, gen) if data is None else torch.as_tensor(np.asarray(data, dtype=np.float64))
            p = x.mean(0).clamp(0.01, 0.99)
            W = beta * torch.randn(n_v, n_h, generator=_theta_generator(params.theta_seed, gen), dtype=f64)
            b, c = torch.log(p / (1 - p)), torch.zeros(n_h, dtype=f64)
            return cls(*(_cast(t, dtype, device) for t in (W, b, c, x)))
        gen_theta = _theta_generator(params.theta_seed, gen)
        W = beta * torch.randn(n_v, n_h, generator=gen_theta, dtype=f64)
        b = beta * torch.randn(n_v, generator=gen_theta, dtype=f64)
        c = beta * torch.randn(n_h, generator=gen_theta, dtype=f64)
        if data is not None:
            x = torch.as_tensor(np.asarray(data, dtype=np.float64))
        else:
            x = cls(W, b, c, torch.zeros(1, n_v, dtype=f64)).sample_exact((params.n_data,), gen)
        return cls(*(_cast(t, dtype, device) for t in (W, b, c, x)))

    # -- shapes and parameters ----------------------------------------------------------------
    @property
    def n_data(self) -> int:
        return self.x.shape[0]

    @property
    def n_visible(self) -> int:
        return self.W.shape[0]

    @property
    def n_hidden(self) -> int:
        return self.W.shape[1]

    @property
    def state_dim(self) -> int:
        """Chain state = the visible vector v (h is resampled from v at the start of every sweep)."""
        return self.n_visible

    @property
    def uniforms_per_sweep(self) -> int:
        return self.n_hidden + self.n_visible

    def parameters(self) -> dict[str, Tensor]:
        return {"W": self.W, "b": self.b, "c": self.c}

    def flat_theta(self) -> Tensor:
        return self.layout.flatten(self.parameters())

    def with_theta(self, theta: Tensor, x: Tensor | None = None) -> RBM:
        """The RBM at flat θ, on data ``x`` (default: this target's)."""
        p = self.layout.unflatten(theta)
        return RBM(p["W"], p["b"], p["c"], (self.x if x is None else x).to(theta.dtype))

    def initial_theta(self, gen: torch.Generator) -> Tensor:
        """Training start (Hinton 2010, "A practical guide to training RBMs", §8): W ~ N(0, 0.01²),
        b = logit of the data means clipped to [0.01, 0.99], c = 0; flat, float64."""
        f64 = torch.float64
        p = self.x.double().mean(0).clamp(0.01, 0.99).cpu()
        W = 0.01 * torch.randn(self.n_visible, self.n_hidden, generator=gen, dtype=f64)
        return self.layout.flatten({"W": W, "b": torch.log(p / (1 - p)), "c": torch.zeros(self.n_hidden, dtype=f64)})

    def double(self) -> RBM:
        return self if self.W.dtype == torch.float64 else RBM(self.W.double(), self.b.double(), self.c.double(), self.x.double())

    # -- exact quantities (enumeration over h) ------------------------------------------------
    def hidden_log_weights(self) -> tuple[Tensor, Tensor]:
        """(H [2^{n_h}, n_h], log p̃(h) = cᵀh + Σ_i softplus(b_i + (Wh)_i)) — cached."""
        if self._table is None:
            n_h = self.n_hidden
            H = _bits(torch.arange(2**n_h, device=self.W.device), n_h).to(self.W.dtype)
            self._table = (H, H @ self.c + softplus(H @ self.W.T + self.b).sum(-1))
        return self._table

    def log_z(self) -> Tensor:
        return torch.logsumexp(self.hidden_log_weights()[1], 0)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = −bᵀv − Σ_j softplus(c_j + (vW)_j), [...]."""
        return -(v @ self.b) - softplus(v @ self.W + self.c).sum(-1)

    def log_likelihood(self) -> Tensor:
        """log p(x) = −Σ_n F(x_n) − N log Z, in this target's dtype."""
        return -self.free_energy(self.x).sum() - self.n_data * self.log_z()

    def log_prob(self, v: Tensor) -> Tensor:
        """log p_θ(v) = −F(v) − log Z per row of v [..., n_v], exact (log Z by enumeration over h)."""
        return -self.free_energy(v) - self.log_z()

    def weighted_grad_free_energy(self, v: Tensor, weights: Tensor) -> Tensor:
        """Σ_s weights[..., s] ∇θ F(v[..., s, :]) for v [B, S, n_v], weights [B, S] → [B, P]."""
        ph = torch.sigmoid(v @ self.W + self.c)  # E[h | v], [B, S, n_h]
        wv = weights.unsqueeze(-1) * v
        gW = -torch.einsum("bsi,bsj->bij", wv, ph)
        return self.layout.flatten({"W": gW, "b": -wv.sum(1), "c": -(weights.unsqueeze(-1) * ph).sum(1)}, (v.shape[0],))

    def data_term(self) -> Tensor:
        """−Σ_n ∇θ F(x_n), [P]."""
        return -self.weighted_grad_free_energy(self.x.unsqueeze(0), torch.ones(1, self.n_data, dtype=self.x.dtype, device=self.x.device))[0]

    def model_expectation(self) -> Tensor:
        """E_{p_θ}[∇θ F(v)] = −(E[v hᵀ], E[v], E[h]) by enumeration over h, [P]."""
        H, lw = self.hidden_log_weights()
        p = torch.softmax(lw, 0)
        pv = torch.sigmoid(H @ self.W.T + self.b)  # E[v | h], [2^{n_h}, n_v]
        wpv = p.unsqueeze(-1) * pv
        return -self.layout.flatten({"W": wpv.T @ H, "b": wpv.sum(0), "c": p @ H})

    def rare_value_probability(self) -> float:
        """q_min = min_i min(P(v_i = 1), P(v_i = 0)) under p_θ, exact (E[v] by enumeration over h).

        The gradient's v-coordinates (v and v σ(c + vW)ᵀ) vanish unless v_i = 1, so a rare value of a visible
        unit is a rare atom of those coordinates: the rare-state condition of the bias test
        (:func:`gradbench.stats.rare_state_verdict`). The h-coordinates σ(c + vW) are bounded in (0, 1)."""
        t = self.double()
        H, lw = t.hidden_log_weights()
        ev = torch.softmax(lw, 0) @ torch.sigmoid(H @ t.W.T + t.b)
        return float(torch.minimum(ev, 1 - ev).min())

    def exact_grad(self) -> Tensor:
        """∇θ log p(x) = −Σ_n ∇F(x_n) + N E_p[∇F], in float64."""
        t = self.double()
        return t.data_term() + t.n_data * t.model_expectation()

    def reference(self, wrt: str = "theta") -> Reference:
        if wrt != "theta":
            raise ValueError(f"RBM has no reference for gradients w.r.t. {wrt!r}")
        return Reference(self.exact_grad(), kind="enumerated")

    # -- sampling -----------------------------------------------------------------------------
    def sample_exact(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """Exact draws v ~ p_θ(v), [*batch, n_v]: h by inverse CDF over the enumerated p(h), then v | h."""
        H, lw = self.hidden_log_weights()
        cdf = torch.softmax(lw, 0).cumsum(0)
        u = torch.rand(batch, generator=gen, dtype=lw.dtype, device=lw.device)
        h = H[_inverse_cdf_index(cdf, u.reshape(-1))].reshape(*batch, self.n_hidden)
        uv = torch.rand(*batch, self.n_visible, generator=gen, dtype=lw.dtype, device=lw.device)
        return (uv < torch.sigmoid(h @ self.W.T + self.b)).to(lw.dtype)

    def sweep(self, v: Tensor, u: Tensor) -> Tensor:
        """One block-Gibbs sweep h ~ p(h | v), v′ ~ p(v | h) driven by uniforms u [..., n_h + n_v]."""
        n_h = self.n_hidden
        h = (u[..., :n_h] < torch.sigmoid(v @ self.W + self.c)).to(v.dtype)
        return (u[..., n_h:] < torch.sigmoid(h @ self.W.T + self.b)).to(v.dtype)

    def arrays(self) -> dict[str, np.ndarray]:
        """Parameters by name, data ``x``, exact gradient ``grad_<name>``, and ``log_z``."""
        out = {name: t.detach().cpu().numpy() for name, t in self.parameters().items()}
        out["x"] = self.x.detach().cpu().numpy()
        out.update({f"grad_{k}": g.cpu().numpy() for k, g in self.layout.unflatten(self.exact_grad()).items()})
        out["log_z"] = np.asarray(float(self.double().log_z()))
        return out


def digits(n: int, binarize: str, gen: torch.Generator) -> Tensor:
    """The first n of a seeded permutation of sklearn's 8×8 digits, binarised, float64 [n, 64]."""
    from sklearn.datasets import load_digits

    pixels = torch.as_tensor(load_digits().data, dtype=torch.float64) / 16.0
    rows = torch.randperm(pixels.shape[0], generator=gen)[:n]
    p = pixels[rows]
    if binarize == "threshold":
        return (p > 0.5).to(torch.float64)
    return (torch.rand(p.shape, generator=gen, dtype=torch.float64) < p).to(torch.float64)


def rbm_brute_force_log_z(W: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """log Σ_{v, h} exp(vᵀWh + bᵀv + cᵀh) over all 2^{n_v + n_h} joint states (tiny sizes; tests)."""
    n_v, n_h = W.shape
    V = _bits(torch.arange(2**n_v), n_v).to(W.dtype)
    H = _bits(torch.arange(2**n_h), n_h).to(W.dtype)
    return torch.logsumexp((V @ W @ H.T + (V @ b).unsqueeze(1) + (H @ c).unsqueeze(0)).reshape(-1), 0)


# -- Ising -------------------------------------------------------------------------------------
@dataclass
class Ising:
    """A fully visible ±1 Boltzmann machine at θ = (J_{i<j}, h) with data x [N, n] in {−1, +1}."""

    capabilities = frozenset({"energy_based"})

    J: Tensor  # [n, n] symmetric, zero diagonal
    h: Tensor  # [n]
    x: Tensor
    _table: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.h.shape[0]
        if n > MAX_SPINS:
            raise ValueError(f"n_spins = {n} > {MAX_SPINS}: the partition function would not be enumerable")
        if not torch.equal(self.J, self.J.T) or bool(self.J.diagonal().ne(0).any()):
            raise ValueError("J must be symmetric with a zero diagonal")
        if self.x.ndim != 2 or self.x.shape[1] != n or not bool((self.x.abs() == 1).all()):
            raise ValueError(f"data must be ±1 spins of shape [N, {n}]")
        self.pairs = torch.triu_indices(n, n, 1, device=self.h.device)
        self.layout = ParamLayout((ParamGroup("J", (self.pairs.shape[1],)), ParamGroup("h", (n,))))

    @classmethod
    def build(cls, params: IsingParams, proposal: NoProposal, seed: int, dtype: torch.dtype = torch.float64,
              device: str | torch.device = "cpu", data: np.ndarray | None = None) -> Ising:
        gen = make_generator(seed)
        f64, n, beta = torch.float64, params.n_spins, params.weight_scale
        gen_theta = _theta_generator(params.theta_seed, gen)
        J = torch.triu(beta / math.sqrt(n) * torch.randn(n, n, generator=gen_theta, dtype=f64), 1)
        J = J + J.T
        h = beta * params.field_scale * torch.randn(n, generator=gen_theta, dtype=f64)
        if data is not None:
            x = torch.as_tensor(np.asarray(data, dtype=np.float64))
        else:
            x = cls(J, h, torch.ones(1, n, dtype=f64)).sample_exact((params.n_data,), gen)
        return cls(*(_cast(t, dtype, device) for t in (J, h, x)))

    @property
    def n_data(self) -> int:
        return self.x.shape[0]

    @property
    def n_spins(self) -> int:
        return self.h.shape[0]

    @property
    def state_dim(self) -> int:
        return self.n_spins

    @property
    def uniforms_per_sweep(self) -> int:
        return self.n_spins

    def parameters(self) -> dict[str, Tensor]:
        return {"J": self.J[self.pairs[0], self.pairs[1]], "h": self.h}

    def flat_theta(self) -> Tensor:
        return self.layout.flatten(self.parameters())

    def with_theta(self, theta: Tensor, x: Tensor | None = None) -> Ising:
        """The Ising model at flat θ, on data ``x`` (default: this target's)."""
        p = self.layout.unflatten(theta)
        n = self.n_spins
        J = torch.zeros(n, n, dtype=theta.dtype, device=theta.device)
        J[self.pairs[0], self.pairs[1]] = p["J"]
        return Ising(J + J.T, p["h"], (self.x if x is None else x).to(theta.dtype))

    def initial_theta(self, gen: torch.Generator) -> Tensor:
        """Training start: J_{i<j} ~ N(0, 0.01²), h = atanh of the data means clipped to [−0.98, 0.98] (the
        independent-spin fit); flat, float64."""
        f64 = torch.float64
        m = self.x.double().mean(0).clamp(-0.98, 0.98).cpu()
        return self.layout.flatten({"J": 0.01 * torch.randn(self.pairs.shape[1], generator=gen, dtype=f64), "h": torch.atanh(m)})

    def double(self) -> Ising:
        return self if self.h.dtype == torch.float64 else Ising(self.J.double(), self.h.double(), self.x.double())

    def states(self, idx: Tensor) -> Tensor:
        """Spin configurations of enumeration indices [M] → [M, n] in {−1, +1}."""
        return (2 * _bits(idx, self.n_spins) - 1).to(self.h.dtype)

    def free_energy(self, s: Tensor) -> Tensor:
        """F(s) = −½ sᵀJs − hᵀs (= −Σ_{i<j} J_ij s_i s_j − hᵀs), [...]."""
        return -0.5 * ((s @ self.J) * s).sum(-1) - s @ self.h

    def log_weights(self) -> Tensor:
        """−F(s) of all 2^n states in enumeration order, [2^n] — cached."""
        if self._table is None:
            total = 2**self.n_spins
            parts = [-self.free_energy(self.states(torch.arange(a, min(a + ENUM_CHUNK, total), device=self.h.device)))
                     for a in range(0, total, ENUM_CHUNK)]
            self._table = torch.cat(parts)
        return self._table

    def log_z(self) -> Tensor:
        return torch.logsumexp(self.log_weights(), 0)

    def log_likelihood(self) -> Tensor:
        return -self.free_energy(self.x).sum() - self.n_data * self.log_z()

    def log_prob(self, s: Tensor) -> Tensor:
        """log p_θ(s) = −F(s) − log Z per row of s [..., n], exact (log Z by enumeration)."""
        return -self.free_energy(s) - self.log_z()

    def weighted_grad_free_energy(self, s: Tensor, weights: Tensor) -> Tensor:
        """Σ_s weights[..., s] ∇θ F(s) for s [B, S, n], weights [B, S] → [B, P]."""
        ws = weights.unsqueeze(-1) * s
        outer = torch.einsum("bsi,bsj->bij", ws, s)
        return -self.layout.flatten({"J": outer[:, self.pairs[0], self.pairs[1]], "h": ws.sum(1)}, (s.shape[0],))

    def data_term(self) -> Tensor:
        return -self.weighted_grad_free_energy(self.x.unsqueeze(0), torch.ones(1, self.n_data, dtype=self.x.dtype, device=self.x.device))[0]

    def model_expectation(self) -> Tensor:
        """E_p[∇θ F(s)] = −(E[s_i s_j]_{i<j}, E[s]) by enumeration in chunks, [P]."""
        lw = self.log_weights()
        p = torch.softmax(lw, 0)
        n, total = self.n_spins, lw.shape[0]
        ss = torch.zeros(n, n, dtype=lw.dtype, device=lw.device)
        m = torch.zeros(n, dtype=lw.dtype, device=lw.device)
        for a in range(0, total, ENUM_CHUNK):
            idx = torch.arange(a, min(a + ENUM_CHUNK, total), device=lw.device)
            S = self.states(idx)
            ps = p[idx].unsqueeze(-1) * S
            ss += ps.T @ S
            m += ps.sum(0)
        return -self.layout.flatten({"J": ss[self.pairs[0], self.pairs[1]], "h": m})

    def rare_value_probability(self) -> float:
        """q_min = min_j min(P(u_j = +1), P(u_j = −1)) = min_j (1 − |E u_j|)/2 over the ±1 sufficient statistics
        u = ((s_i s_j)_{i<j}, s), exact: a rare value of one of them is a rare atom of that gradient coordinate
        (the bias test's rare-state condition, :func:`gradbench.stats.rare_state_verdict`)."""
        e = self.double().model_expectation()  # = −E[u]
        return float(((1 - e.abs()) / 2).min())

    def exact_grad(self) -> Tensor:
        t = self.double()
        return t.data_term() + t.n_data * t.model_expectation()

    def reference(self, wrt: str = "theta") -> Reference:
        if wrt != "theta":
            raise ValueError(f"Ising has no reference for gradients w.r.t. {wrt!r}")
        return Reference(self.exact_grad(), kind="enumerated")

    def sample_exact(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """Exact draws s ~ p_θ(s), [*batch, n], by inverse CDF over the enumerated table."""
        lw = self.log_weights()
        cdf = torch.softmax(lw, 0).cumsum(0)
        u = torch.rand(batch, generator=gen, dtype=lw.dtype, device=lw.device)
        return self.states(_inverse_cdf_index(cdf, u.reshape(-1))).reshape(*batch, self.n_spins)

    def sweep(self, s: Tensor, u: Tensor) -> Tensor:
        """Systematic-scan single-site Gibbs, s_i = +1 iff u_i < σ(2 (h_i + Σ_j J_ij s_j)), u [..., n]."""
        s = s.clone()
        for i in range(self.n_spins):
            p_up = torch.sigmoid(2 * (s @ self.J[i] + self.h[i]))
            s[..., i] = torch.where(u[..., i] < p_up, 1.0, -1.0).to(s.dtype)
        return s

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"J": self.J.detach().cpu().numpy(), "h": self.h.detach().cpu().numpy(), "x": self.x.detach().cpu().numpy()}
        out.update({f"grad_{k}": g.cpu().numpy() for k, g in self.layout.unflatten(self.exact_grad()).items()})
        out["log_z"] = np.asarray(float(self.double().log_z()))
        return out


EBMTarget = RBM | Ising
