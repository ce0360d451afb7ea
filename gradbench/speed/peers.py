"""The Pyro comparison: ``iwae`` vs Pyro's ``RenyiELBO(alpha=0)`` on the same PPCA or Bernoulli VAE, after checking
that both give the same gradient for the same noise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gradbench import registry
from gradbench.seeding import derive_seed, make_generator
from gradbench.speed.results import _ratio
from gradbench.speed.settings import SpeedError, SpeedPlan, SpeedSettings
from gradbench.speed.timing import time_interleaved


def _pyro_peer(plan: SpeedPlan, target: Any, K: int, validate: bool, notes: list[str]) -> tuple[Any, Any, str] | None:
    """(peer, the one-data-point target it matches, goal key), or None with a note saying why not."""
    from gradbench.peers import pyro_ppca

    if not pyro_ppca.available():
        notes.append(f"Pyro comparison skipped: {pyro_ppca.INSTALL_HINT}")
        return None
    if plan.target.model == "ppca":
        if target.n_data != 1:
            notes.append("Pyro comparison skipped: it needs model ppca with n_data = 1 (RenyiELBO weighs whole particles)")
            return None
        return pyro_ppca.PyroPPCA(target, K, validate=validate), target, "pyro"
    if plan.target.model == "vae" and target.model.likelihood == "bernoulli":
        from gradbench.peers import pyro_vae

        one = pyro_vae.one_point_target(target, 0)
        if target.n_data > 1:
            notes.append(f"Pyro on the VAE: RenyiELBO weighs whole particles, so both sides run on data point 0 "
                         f"alone (same θ, same q(z | x_0)); per replicate = K = {K} evaluations")
        return pyro_vae.PyroVAE(one, K, validate=validate), one, "pyro_vae"
    notes.append(f"Pyro comparison skipped: no Pyro model of {plan.target.model!r} (ppca, Bernoulli vae)")
    return None


def _pyro_ratio(plan: SpeedPlan, settings: SpeedSettings, target: Any, notes: list[str],
                progress: Callable[[str], None]) -> list[dict[str, Any]]:
    K, R = plan.K, plan.R
    found = _pyro_peer(plan, target, K, settings.pyro_validate, notes)
    if found is None:
        return []
    peer, one, goal = found
    progress(f"Pyro RenyiELBO(alpha=0, K={K}) agreement check")
    diff = check_pyro_agrees(one, peer, K, seeds=range(settings.check_seeds))
    # float64: both sides sum ~K·P rounded products in different orders, relative error ≲ 1e-12; float32 ≲ 1e-3
    tol = 1e-8 if one.x.dtype == torch.float64 else 1e-3
    if not diff <= tol:
        raise SpeedError(f"Pyro and gradbench iwae disagree for the same noise (max relative difference "
                                   f"{diff:.3g} > {tol:g}): not timing them")
    progress(f"Pyro RenyiELBO(alpha=0, K={K}) vs iwae (R={R})")
    block = settings.pyro_block
    g = make_generator(derive_seed(plan.target.noise_seed(0), "speed", "iwae-pyro"), plan.suite.device)
    iwae = registry.ESTIMATORS["iwae"].fn

    def pyro_block() -> None:
        for _ in range(block):
            peer.grad()

    with torch.enable_grad():
        t = time_interleaved({"iwae": lambda: iwae(one, R, g, K=K), "pyro": pyro_block},
                             device=plan.suite.device, warmup=settings.warmup, repeats=settings.repeats)
    per_rep_ours = float(np.median(t["iwae"])) / R
    per_rep_pyro = float(np.median(t["pyro"])) / block
    return [_ratio(f"Pyro RenyiELBO(α=0) ÷ iwae, seconds per replicate ({plan.target.model}, N=1, K={K}, R={R}; Pyro "
                   f"{per_rep_pyro * 1e3:.3g} ms, iwae {per_rep_ours * 1e6:.3g} µs; agree to {diff:.1g})",
                   per_rep_pyro / per_rep_ours, goal, pyro_seconds=per_rep_pyro, iwae_seconds=per_rep_ours,
                   max_rel_diff=diff)]


def check_pyro_agrees(target: Any, peer: Any, K: int, seeds: Any) -> float:
    """Largest relative difference between Pyro's and gradbench's iwae gradient for the same noise."""
    iwae = registry.ESTIMATORS["iwae"].fn
    worst = 0.0
    for s in seeds:
        with torch.enable_grad():
            theirs = peer.grad(seed=int(s))
        ours = iwae(target, 1, make_generator(int(s), target.x.device), K=K).grads[0]
        worst = max(worst, float((theirs - ours).abs().max() / ours.abs().max()))
    return worst
