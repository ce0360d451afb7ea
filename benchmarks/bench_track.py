"""``track_`` benchmarks: *statistical* figures at a fixed seed, so that a change that makes an
estimator noisier (or its chains slower to meet) shows up in asv like a slowdown.

Same target for every estimator (PPCA d = 10, k = 3, N = 1, proposal shift 0.5 and scale 1.5),
R = 2000 replicates, K = 16 particles, fixed seed: each figure is deterministic for a given commit
and machine arithmetic, so a change in it means the estimator itself changed. The figures are
computed once per run (``setup_cache``) and looked up by each ``track_``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from benchmarks.common import FAMILIES, SEED, neural_call, neural_target, ppca_target, require_estimator
from gradbench.seeding import make_generator

R = 2000
K = 16


def _figures() -> dict[str, dict[str, float]]:
    target = ppca_target(10, 3)
    exact = target.exact_grad().double()
    out: dict[str, dict[str, float]] = {}
    for name, (_, _, particles) in FAMILIES.items():
        try:
            fn = require_estimator(name)
        except NotImplementedError:
            continue
        sample = fn(target, R, make_generator(SEED), **{particles: K})
        G = sample.grads[~sample.diagnostics["nonfinite"]].double()
        trace = float(G.var(dim=0, unbiased=True).sum())
        evals = float(sample.cost.double().mean())
        fig = {"trace_cov": trace, "evals_mean": evals, "work_norm_var": trace * evals,
               "rel_bias": float(torch.linalg.norm(G.mean(0) - exact) / torch.linalg.norm(exact))}
        if "tau" in sample.diagnostics:
            fig["tau_mean"] = float(sample.diagnostics["tau"].double().mean())
        out[name] = fig
    return out


def _get(cache: dict[str, dict[str, float]], estimator: str, figure: str) -> float:
    if figure not in cache.get(estimator, {}):
        raise NotImplementedError(f"{estimator} has no {figure} in this commit")
    return cache[estimator][figure]


class _TrackTrace:
    """tr Σ̂ of one estimate and tr Σ̂ × evaluations, per estimator, from the subclass's ``setup_cache`` figures
    (underscored, so asv collects these only through the subclasses, under their names)."""

    param_names: ClassVar[list[str]] = ["estimator"]
    timeout = 600

    def setup(self, cache: dict[str, dict[str, float]], estimator: str) -> None:
        _get(cache, estimator, "trace_cov")

    def track_trace_cov(self, cache: dict[str, dict[str, float]], estimator: str) -> float:
        return _get(cache, estimator, "trace_cov")

    track_trace_cov.unit = "trace of covariance"

    def track_work_norm_var(self, cache: dict[str, dict[str, float]], estimator: str) -> float:
        return _get(cache, estimator, "work_norm_var")

    track_work_norm_var.unit = "trace of covariance x evaluations"


class TrackVariance(_TrackTrace):
    """tr Σ̂ of one estimate, tr Σ̂ × evaluations, and relative bias against the exact gradient."""

    params = (list(FAMILIES),)

    def setup_cache(self) -> dict[str, dict[str, float]]:
        return _figures()

    def track_rel_bias(self, cache: dict[str, dict[str, float]], estimator: str) -> float:
        return _get(cache, estimator, "rel_bias")

    track_rel_bias.unit = "relative bias"


class TrackMeeting:
    """Mean meeting time and mean cost of the coupled chains at a fixed seed."""

    params = (["coupled_isir", "coupled_pimh"],)
    param_names: ClassVar[list[str]] = ["estimator"]
    timeout = 600

    def setup_cache(self) -> dict[str, dict[str, float]]:
        return _figures()

    def setup(self, cache: dict[str, dict[str, float]], estimator: str) -> None:
        _get(cache, estimator, "tau_mean")

    def track_tau_mean(self, cache: dict[str, dict[str, float]], estimator: str) -> float:
        return _get(cache, estimator, "tau_mean")

    track_tau_mean.unit = "iterations"

    def track_evals_mean(self, cache: dict[str, dict[str, float]], estimator: str) -> float:
        return _get(cache, estimator, "evals_mean")

    track_evals_mean.unit = "log-joint evaluations"


# -- the VAE -----------------------------------------------------------------------------------------
NEURAL_R = 500
VAE_SIZE = {"hidden": [50], "n_data": 4}  # a small VAE: the figures take seconds, not minutes


def _vae_figures() -> dict[str, dict[str, float]]:
    """tr Σ̂, tr Σ̂ × mean evaluations and (coupled) mean meeting time of each estimator on one VAE, fixed seed."""
    target = neural_target("vae", **VAE_SIZE)
    out: dict[str, dict[str, float]] = {}
    for name in ("iwae", "isir", "coupled_isir", "dreg"):
        try:
            sample = neural_call(name, target, NEURAL_R)()
        except NotImplementedError:
            continue
        G = sample.grads[torch.isfinite(sample.grads).all(1)].double()
        trace = float(G.var(dim=0, unbiased=True).sum())
        evals = float(sample.cost.double().mean())
        out[name] = {"trace_cov": trace, "evals_mean": evals, "work_norm_var": trace * evals}
        if "tau" in sample.diagnostics:
            out[name]["tau_mean"] = float(sample.diagnostics["tau"].double().mean())
        if "lockstep_cost" in sample.diagnostics:
            out[name]["lockstep_over_evals"] = float(sample.diagnostics["lockstep_cost"].double().mean()) / evals
    return out


class TrackVAEVariance(_TrackTrace):
    """On a VAE (latent 2, d = 64, hidden 50, N = 4; R = 500, K = 16, fixed seed): tr Σ̂ of one estimate and
    tr Σ̂ × evaluations, so that an estimator that got noisier on a neural target shows up like a slowdown."""

    params = (["iwae", "isir", "coupled_isir", "dreg"],)

    def setup_cache(self) -> dict[str, dict[str, float]]:
        return _vae_figures()


class TrackVAELockstep:
    """Log-joints the coupled driver evaluated ÷ those the estimator is charged, on the same VAE at the fixed seed:
    1 is a perfectly compacted batch; a regression of the per-(replicate, point) compaction raises it."""

    params = (["coupled_isir"],)
    param_names: ClassVar[list[str]] = ["estimator"]
    timeout = 600

    def setup_cache(self) -> dict[str, dict[str, float]]:
        return _vae_figures()

    def track_lockstep_over_evals(self, cache: dict[str, dict[str, float]], estimator: str) -> float:
        return _get(cache, estimator, "lockstep_over_evals")

    track_lockstep_over_evals.unit = "evaluated ÷ charged"
