"""``peakmem_`` benchmarks: peak resident memory at the largest sizes of bench_time."""

from __future__ import annotations

from typing import ClassVar

from benchmarks.common import estimator_call, neural_call, neural_target, ppca_target


class PeakMemLargest:
    """Peak RSS of one batch at K = 64, data_dim = 50, R = 1000 (the largest TimeEstimators cell)."""

    params = (["iwae", "coupled_isir"],)
    param_names: ClassVar[list[str]] = ["estimator"]
    timeout = 300

    def setup(self, estimator: str) -> None:
        self.call = estimator_call(estimator, ppca_target(50), 1000, 64)

    def peakmem_estimate(self, estimator: str) -> None:
        self.call()


class PeakMemNeural:
    """Peak RSS of R = 200 replicates at K = 16 on the digits-sized VAE and SBN (d = 64, N = 10, hidden 200):
    a per-replicate gradient that copied θ per replicate or per particle would show here."""

    params = (["vae", "sbn"], ["iwae", "coupled_isir"])
    param_names: ClassVar[list[str]] = ["target", "estimator"]
    timeout = 300

    def setup(self, target: str, estimator: str) -> None:
        self.call = neural_call(estimator, neural_target(target), 200)

    def peakmem_estimate(self, target: str, estimator: str) -> None:
        self.call()
