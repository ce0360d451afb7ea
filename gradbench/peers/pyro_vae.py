"""The ``vae`` target written as a Pyro model and guide, for Pyro's ``RenyiELBO(alpha=0)``.

Model (:class:`gradbench.models.vae.VAE`): z ~ N(0, I_k), x | z ~ Π_j Bern(σ(f_θ(z)_j)) with the same
MLP decoder f_θ (tanh or softplus hidden units, parameters ``W0, b0, …, WL, bL``, W_l of shape [out, in]).
Guide: the target's diagonal Gaussian q(z | x) = N(m, diag s²), with (m, log s) = ``family.mean_logstd(φ, x)``
held fixed (mean-field or amortised encoder alike: only its values at x enter a θ-gradient).

With ``alpha = 0`` and ``vectorize_particles=True`` the Rényi bound is the IWAE bound
log (1/K) Σ_k w_k, w_k = p_θ(x, z_k) / q(z_k | x), whose θ-gradient (q fixed) is Σ_k w̃_k ∇θ log p_θ(x, z_k):
gradbench's ``iwae`` for one replicate. Pyro weighs whole particles z_{1:N}, gradbench each data point, so
the two agree only for one data point: :func:`one_point_target` cuts a target down to its data point n
(same θ, same q at x_n) and :class:`PyroVAE` refuses targets with N > 1.

The decoder's parameters are local to a ``PyroModule`` (``module_local_params``), nothing is left in
Pyro's global parameter store, and :meth:`PyroVAE.grad` seeds torch's global generator inside
``torch.random.fork_rng`` so that the same seed gives gradbench's ``iwae`` the same noise.

References: Li & Turner (2016), "Rényi divergence variational inference", NeurIPS; Burda, Grosse &
Salakhutdinov (2016), "Importance weighted autoencoders", ICLR; Pyro's ``pyro.infer.RenyiELBO``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gradbench.contracts import ComposedTarget
from gradbench.families.gaussian import GaussianMeanField
from gradbench.models.vae import VAE
from gradbench.peers.pyro_ppca import INSTALL_HINT, available, bound_grads, require_pyro

__all__ = ["INSTALL_HINT", "PyroVAE", "available", "one_point_target"]


def one_point_target(target: ComposedTarget, n: int = 0) -> ComposedTarget:
    """The same VAE (θ) on data point n alone, with q(z | x_n) as a one-point mean-field Gaussian (same m, s)."""
    m, log_s = target.family.mean_logstd(target.phi, target.x)  # type: ignore[attr-defined]
    family = GaussianMeanField(target.latent_dim, 1)
    phi = {"m": m[n:n + 1].detach().clone(), "log_s": log_s[n:n + 1].detach().clone()}
    return ComposedTarget(target.model, family, target.x[n:n + 1], target.theta, phi, seed=target.seed)


class PyroVAE:
    """Pyro model (the MLP decoder) + fixed Gaussian guide of a one-data-point ``vae`` target, and its
    RenyiELBO(α=0) gradient. ``validate=False`` (default) turns Pyro's validation off: Pyro at its fastest."""

    def __init__(self, target: ComposedTarget, K: int, *, validate: bool = False) -> None:
        pyro = require_pyro()
        import pyro.distributions as dist
        from pyro.nn import PyroModule

        vae = target.model
        if not isinstance(vae, VAE) or vae.likelihood != "bernoulli":
            raise ValueError("PyroVAE needs a vae target with a Bernoulli likelihood")
        if target.n_data != 1:
            raise ValueError(f"RenyiELBO weighs whole particles, so it matches gradbench's iwae only for n_data = 1 "
                             f"(got {target.n_data}; use one_point_target)")
        self.target, self.K, self.validate, self._pyro = target, K, validate, pyro
        self.names = [g.name for g in vae.layout.groups]
        m, log_s = (t.detach() for t in target.family.mean_logstd(target.phi, target.x))  # type: ignore[attr-defined]
        scale = torch.exp(log_s)
        act = torch.tanh if vae.activation == "tanh" else F.softplus
        n_layers, k = vae.n_layers, vae.latent_dim
        theta = target.theta

        class Decoder(PyroModule):
            def __init__(self) -> None:
                super().__init__()
                for name in theta:
                    setattr(self, name, torch.nn.Parameter(theta[name].detach().clone()))

            def forward(self, x: Tensor) -> None:
                with pyro.plate("data", x.shape[0]):
                    prior = dist.Normal(torch.zeros((), dtype=x.dtype, device=x.device), 1.0).expand([k])
                    h = pyro.sample("z", prior.to_event(1))
                    for l in range(n_layers):
                        h = h @ getattr(self, f"W{l}").T + getattr(self, f"b{l}")
                        if l < n_layers - 1:
                            h = act(h)
                    pyro.sample("x", dist.Bernoulli(logits=h).to_event(1), obs=x)

        def guide(x: Tensor) -> None:
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(m, scale).to_event(1))

        with pyro.settings.context(module_local_params=True):
            self.model = Decoder()
        self.guide = guide
        self.x = target.x.detach()
        self.elbo = pyro.infer.RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)

    def _params(self) -> list[Any]:
        return [getattr(self.model, name) for name in self.names]

    def grad(self, seed: int | None = None) -> Tensor:
        """One replicate: ∇θ of the IWAE bound, flattened in the target's layout (W0, b0, …).

        With ``seed``, Pyro's noise is torch's global generator seeded with it (inside ``fork_rng``);
        gradbench's ``iwae`` with ``make_generator(seed)`` then draws the same ε for z = m + s ε.
        """
        return self.target.layout.flatten(dict(zip(self.names, bound_grads(self, seed))))
