"""``time_`` benchmarks: one estimate batch of each estimator family across sizes, the floors,
and CPU vs CUDA (asv launches every benchmark with ``spawn``, see asv.conf.json, so CUDA is
initialised in a fresh process)."""

from __future__ import annotations

from typing import ClassVar

import torch

from benchmarks.common import (
    FAMILIES,
    FAMILY_CASES,
    SEED,
    estimator_call,
    family_call,
    neural_call,
    neural_target,
    ppca_target,
    require_device,
)
from gradbench.seeding import make_generator


class TimeEstimators:
    """Seconds for R replicates of each family at K particles on PPCA(data_dim, k=5, N=1), float64."""

    params = (list(FAMILIES), [8, 64], [5, 50], [100, 1000])
    param_names: ClassVar[list[str]] = ["estimator", "K", "data_dim", "R"]
    number = 1
    repeat = (1, 5, 10.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self, estimator: str, K: int, data_dim: int, R: int) -> None:
        self.call = estimator_call(estimator, ppca_target(data_dim), R, K)
        self.call()  # first call: allocator and dispatch warm-up, outside the timing

    def time_estimate(self, estimator: str, K: int, data_dim: int, R: int) -> None:
        self.call()


class TimeFloors:
    """Floor (a): sampling R × K particles and one batched log-joint evaluation of them."""

    params = ([8, 64], [5, 50], [100, 1000])
    param_names: ClassVar[list[str]] = ["K", "data_dim", "R"]
    number = 1
    repeat = (1, 10, 5.0)

    def setup(self, K: int, data_dim: int, R: int) -> None:
        self.target = ppca_target(data_dim)
        self.gen = make_generator(SEED)
        self.K, self.R = K, R

    def time_sample_log_joint(self, K: int, data_dim: int, R: int) -> None:
        z, _ = self.target.sample_proposal((self.R, self.K), self.gen)
        self.target.log_joint(z)


class TimeDevices:
    """iwae and coupled_isir at K = 64, R = 1000, data_dim = 20 on each device (CUDA skipped without a GPU)."""

    params = (["iwae", "coupled_isir"], ["cpu", "cuda"], ["float64", "float32"])
    param_names: ClassVar[list[str]] = ["estimator", "device", "dtype"]
    number = 1
    repeat = (1, 5, 10.0)
    timeout = 300

    def setup(self, estimator: str, device: str, dtype: str) -> None:
        require_device(device)
        target = ppca_target(20, dtype=getattr(torch, dtype), device=device)
        self.call = estimator_call(estimator, target, 1000, 64, device=device)
        self.call()

    def time_estimate(self, estimator: str, device: str, dtype: str) -> None:
        self.call()


class TimeNeural:
    """Seconds for R = 200 replicates at K = 16 on the digits-sized VAE and SBN (d = 64, N = 10, hidden 200)."""

    params = (["vae", "sbn"], ["iwae", "isir", "coupled_isir", "dreg", "vimco"])
    param_names: ClassVar[list[str]] = ["target", "estimator"]
    number = 1
    repeat = (1, 5, 20.0)
    timeout = 300

    def setup(self, target: str, estimator: str) -> None:
        if (target, estimator) in {("sbn", "dreg"), ("vae", "vimco")}:
            raise NotImplementedError("not defined on this target")  # dreg: reparameterised; vimco: the discrete one
        self.call = neural_call(estimator, neural_target(target), 200)
        self.call()

    def time_estimate(self, target: str, estimator: str) -> None:
        self.call()


class TimeNeuralFloor:
    """Floor (a) on the neural targets: sample R × K = 200 × 16 particles, one batched log-joint, one backward to θ."""

    params = (["vae", "sbn"],)
    param_names: ClassVar[list[str]] = ["target"]
    number = 1
    repeat = (1, 10, 10.0)

    def setup(self, target: str) -> None:
        self.target = neural_target(target)

    def time_forward_backward(self, target: str) -> None:
        t = self.target
        z, _ = t.sample_proposal((200, 16), make_generator(SEED))
        theta = {k: v.detach().requires_grad_() for k, v in t.theta.items()}
        with torch.enable_grad():
            torch.autograd.grad(t.model.log_joint(theta, t.x, z).sum(), list(theta.values()))


class TimeFamilies:
    """Seconds for R = 200 replicates of the discrete, semi-implicit and energy-based estimators on one small target
    each (``FAMILY_CASES``: SBN and categorical VAE on d = 64, N = 10; semi-implicit PPCA; RBM 16 × 8)."""

    params = (list(FAMILY_CASES),)
    param_names: ClassVar[list[str]] = ["case"]
    number = 1
    repeat = (1, 5, 20.0)
    timeout = 300

    def setup(self, case: str) -> None:
        self.call = family_call(case, 200)
        self.call()

    def time_estimate(self, case: str) -> None:
        self.call()
