"""The PPCA target written as a Pyro model and guide, for Pyro's ``RenyiELBO(alpha=0)``.

With ``alpha = 0`` and ``vectorize_particles=True``, Pyro's Rényi bound is the IWAE bound
log (1/K) Σ_k w_k, w_k = p(x, z_k) / q(z_k | x), and its gradient with respect to the model
parameters θ = (W, μ, σ) (q held fixed) is Σ_k w̃_k ∇θ log p(x, z_k): exactly gradbench's
``iwae`` estimator for one replicate. Pyro weighs whole particles z_{1:N} (one weight per particle
over all N data points) while gradbench weighs each data point separately, so the two agree only
for ``n_data = 1``; :class:`PyroPPCA` refuses other targets.

σ is a plain (unconstrained) parameter, as in gradbench, so gradients are w.r.t. σ itself. The
model's parameters are local to a ``PyroModule`` (``module_local_params``), so nothing is left in
Pyro's global parameter store. Pyro draws its noise from torch's global generator:
:meth:`PyroPPCA.grad` seeds it inside ``torch.random.fork_rng`` so the caller's state is
untouched and the same seed gives gradbench's ``iwae`` the same noise (see ``tests/test_speed.py``).

Reference: Li & Turner (2016), "Rényi divergence variational inference", NeurIPS; Pyro's
``pyro.infer.RenyiELBO``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradbench.models.ppca import PPCA

INSTALL_HINT = "Pyro is an optional peer: pip install 'gradbench[peers]' (or pip install pyro-ppl)"


def require_pyro() -> Any:
    """Import pyro or raise ImportError with the install command."""
    try:
        import pyro
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(INSTALL_HINT) from exc
    return pyro


def available() -> bool:
    try:
        require_pyro()
    except ImportError:
        return False
    return True


class PyroPPCA:
    """Pyro model + fixed guide for a one-data-point PPCA target, and its RenyiELBO(α=0) gradient.

    ``validate=False`` (the default) turns Pyro's argument/support validation off while it runs,
    which is Pyro at its fastest; ``validate=True`` is Pyro's out-of-the-box setting.
    """

    def __init__(self, target: PPCA, K: int, *, validate: bool = False) -> None:
        pyro = require_pyro()
        import pyro.distributions as dist
        from pyro.nn import PyroModule

        if target.n_data != 1:
            raise ValueError(f"RenyiELBO weighs whole particles, so it matches gradbench's iwae only for n_data = 1 "
                             f"(got {target.n_data})")
        self.target, self.K, self.validate = target, K, validate
        self._pyro = pyro
        x = target.x.detach()
        q_mean, q_chol = target.q_mean.detach(), target.q_chol.detach()

        class PPCAModel(PyroModule):
            def __init__(self) -> None:
                super().__init__()
                self.W = torch.nn.Parameter(target.W.detach().clone())
                self.mu = torch.nn.Parameter(target.mu.detach().clone())
                self.sigma = torch.nn.Parameter(target.sigma.detach().clone())

            def forward(self, x: Tensor) -> None:
                W, mu, sigma = self.W, self.mu, self.sigma
                k = W.shape[1]
                with pyro.plate("data", x.shape[0]):
                    prior = dist.Normal(torch.zeros((), dtype=W.dtype, device=W.device), 1.0).expand([k])
                    z = pyro.sample("z", prior.to_event(1))
                    pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)

        def guide(x: Tensor) -> None:
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.MultivariateNormal(q_mean, scale_tril=q_chol))

        with pyro.settings.context(module_local_params=True):
            self.model = PPCAModel()
        self.guide = guide
        self.x = x
        self.elbo = pyro.infer.RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)

    def _params(self) -> list[Tensor]:
        return [self.model.W, self.model.mu, self.model.sigma]

    def grad(self, seed: int | None = None) -> Tensor:
        """One replicate: ∇θ of the IWAE bound, flattened in the target's layout (W, mu, sigma).

        With ``seed``, Pyro's noise is torch's global generator seeded with it (inside
        ``fork_rng``); gradbench's ``iwae`` with ``make_generator(seed)`` then sees the same noise.
        """
        W, mu, sigma = bound_grads(self, seed)
        return self.target.layout.flatten({"W": W, "mu": mu, "sigma": sigma.reshape(1)})


def bound_grads(peer: Any, seed: int | None) -> list[Tensor]:
    """∇ of the IWAE bound w.r.t. ``peer._params()`` from one ``peer.elbo.loss_and_grads`` call (Pyro minimises the
    negative bound, so the gradients are negated), with Pyro's validation as ``peer.validate`` and, with ``seed``,
    torch's global generator seeded inside ``fork_rng`` (the caller's global stream is left as it was)."""
    pyro = peer._pyro
    params = peer._params()
    for p in params:
        p.grad = None
    with (pyro.settings.context(module_local_params=True), pyro.validation_enabled(peer.validate),
          torch.random.fork_rng(devices=[], enabled=seed is not None)):
        if seed is not None:
            torch.manual_seed(seed)
        peer.elbo.loss_and_grads(peer.model, peer.guide, peer.x)
    return [-p.grad for p in params]
