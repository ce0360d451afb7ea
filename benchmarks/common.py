"""Shared set-up of the asv benchmarks: PPCA targets, estimator calls, device handling.

Benchmarks use only the stable API (``registry``, ``PPCA.synthetic``) so that ``asv continuous``
can run them against older commits; an estimator a commit does not have is skipped
(``NotImplementedError`` in ``setup`` is asv's "skip").
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from gradbench.models.ppca import PPCA, PPCAParams, ProposalParams
from gradbench.seeding import make_generator

SEED = 20240611
# One intra-op thread unless GRADBENCH_BENCH_THREADS says otherwise: on a shared or busy machine,
# multi-threaded CPU timings mostly measure the scheduler. (CUDA timings are unaffected.)
torch.set_num_threads(int(os.environ.get("GRADBENCH_BENCH_THREADS", "1")))
# θ-gradient estimator families: registry name → (module, function, particle parameter). Imported
# from their modules, not through gradbench.registry, which also imports every protocol (scipy,
# pandas): every benchmark runs in a freshly spawned interpreter, and this halves its start-up.
FAMILIES = {
    "elbo": ("gradbench.estimators.variational", "elbo", "S"),
    "oracle": ("gradbench.estimators.posterior", "oracle", "S"),
    "iwae": ("gradbench.estimators.importance", "iwae", "K"),
    "isir": ("gradbench.estimators.coupled", "isir", "K"),
    "coupled_isir": ("gradbench.estimators.coupled", "coupled_isir", "K"),
    "coupled_pimh": ("gradbench.estimators.coupled", "coupled_pimh", "K"),
}


def require_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device")


def require_estimator(name: str) -> Any:
    """The estimator function, or asv's skip (NotImplementedError) when this commit lacks it."""
    module, attr, _ = FAMILIES[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise NotImplementedError(f"estimator {name!r} is not in this commit") from None


def ppca_target(data_dim: int, latent_dim: int = 5, n_data: int = 1, *, mean_shift: float = 0.5,
                cov_scale: float = 1.5, dtype: torch.dtype = torch.float64, device: str = "cpu") -> PPCA:
    params = PPCAParams(data_dim=data_dim, latent_dim=min(latent_dim, data_dim), n_data=n_data)
    return PPCA.synthetic(params, ProposalParams(mean_shift=mean_shift, cov_scale=cov_scale), SEED, dtype, device)


def estimator_call(name: str, target: PPCA, R: int, particles: int, seed: int = SEED, device: str = "cpu"):
    """A zero-argument function that runs estimator ``name`` for R replicates (and waits for the device)."""
    fn = require_estimator(name)
    params = {FAMILIES[name][2]: particles}
    gen = make_generator(seed, device)

    def call():
        out = fn(target, R, gen, **params)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    return call


# Neural targets: a digits-sized VAE and SBN on synthetic data drawn from the model (d = 64, N = 10,
# hidden 200), built through the registry (the same builders as the suites). Estimators by target: name →
# (module, function, {parameters}); ``require_neural`` skips (NotImplementedError) what a commit lacks.
NEURAL_ESTIMATORS = {
    "iwae": ("gradbench.estimators.importance", "iwae", {"K": 16}),
    "isir": ("gradbench.estimators.coupled", "isir", {"K": 16, "t": 1}),
    "coupled_isir": ("gradbench.estimators.coupled", "coupled_isir", {"K": 16}),
    "sumo": ("gradbench.estimators.sumo", "sumo", {}),
    "dreg": ("gradbench.estimators.pathwise", "dreg", {"K": 16}),
    "vimco": ("gradbench.estimators.score", "vimco", {"K": 16}),
}
NEURAL_TARGETS = {
    "vae": ({"latent_dim": 2, "data_dim": 64, "n_data": 10, "hidden": [200]}, {"mean_shift": 0.5, "log_std_shift": 0.7}),
    "sbn": ({"layers": [10], "conditionals": "mlp", "hidden": 200, "data_dim": 64, "n_data": 10}, {"logit_noise": 0.5}),
}


def neural_target(model: str, dtype: torch.dtype = torch.float64, device: str = "cpu", **overrides: Any) -> Any:
    """The ``vae`` or ``sbn`` benchmark target (NotImplementedError where this commit has no such model)."""
    try:
        from gradbench.registry import MODELS

        entry = MODELS[model]
    except (ImportError, KeyError):
        raise NotImplementedError(f"model {model!r} is not in this commit") from None
    params, proposal = NEURAL_TARGETS[model]
    return entry.build(entry.params(**{**params, **overrides}), entry.proposal(**proposal), SEED, dtype, device, None)


def neural_call(name: str, target: Any, R: int, seed: int = SEED, device: str = "cpu", **params: Any):
    """A zero-argument function running NEURAL_ESTIMATORS[name] for R replicates (fresh generator each call)."""
    module, attr, defaults = NEURAL_ESTIMATORS[name]
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise NotImplementedError(f"estimator {name!r} is not in this commit") from None
    kwargs = {**defaults, **params}

    def call():
        out = fn(target, R, make_generator(seed, device), **kwargs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    return call


# Discrete-latent (SBN, categorical VAE), semi-implicit and energy-based (RBM) families: one small target each,
# built through the registry, and the estimators that serve it with their default parameters.
# case → (model, model params, proposal, estimator, estimator params).
FAMILY_CASES = {
    "sbn/disarm": ("sbn", {"layers": [10], "data_dim": 64, "n_data": 10}, {"logit_noise": 0.5}, "disarm", {}),
    "sbn/rloo": ("sbn", {"layers": [10], "data_dim": 64, "n_data": 10}, {"logit_noise": 0.5}, "rloo", {}),
    "sbn/sum_and_sample": ("sbn", {"layers": [10], "data_dim": 64, "n_data": 10}, {"logit_noise": 0.5},
                           "sum_and_sample", {}),
    "categorical_vae/rloo": ("categorical_vae", {"data_dim": 64, "n_data": 10}, {}, "rloo", {}),
    "categorical_vae/sum_and_sample": ("categorical_vae", {"data_dim": 64, "n_data": 10}, {}, "sum_and_sample", {}),
    "ppca_semi_implicit/sivi": ("ppca_semi_implicit", {"data_dim": 5, "latent_dim": 2, "n_data": 3},
                                {"mixing_dim": 3, "mean_shift": 0.5}, "sivi", {"K": 16}),
    "ppca_semi_implicit/uivi": ("ppca_semi_implicit", {"data_dim": 5, "latent_dim": 2, "n_data": 3},
                                {"mixing_dim": 3, "mean_shift": 0.5}, "uivi", {}),
    "rbm/cd": ("rbm", {"n_visible": 16, "n_hidden": 8}, {}, "cd", {}),
    "rbm/coupled_gibbs": ("rbm", {"n_visible": 16, "n_hidden": 8}, {}, "coupled_gibbs", {}),
}


def family_call(case: str, R: int, seed: int = SEED):
    """A zero-argument function running FAMILY_CASES[case] for R replicates (NotImplementedError where this commit
    lacks the model or the estimator)."""
    model, params, proposal, name, est_params = FAMILY_CASES[case]
    try:
        from gradbench.registry import ESTIMATORS, MODELS

        entry, fn = MODELS[model], ESTIMATORS[name].fn
    except (ImportError, KeyError):
        raise NotImplementedError(f"{case} is not in this commit") from None
    target = entry.build(entry.params(**params), entry.proposal(**proposal), SEED, torch.float64, "cpu", None)
    return lambda: fn(target, R, make_generator(seed), **est_params)
