"""``peakmem_`` benchmarks: peak resident memory at the largest sizes of bench_time."""

from __future__ import annotations

from benchmarks.common import estimator_call, ppca_target


class PeakMemLargest:
    """Peak RSS of one batch at K = 64, data_dim = 50, R = 1000 (the largest TimeEstimators cell)."""

    params = (["iwae", "coupled_isir"],)
    param_names = ["estimator"]
    timeout = 300

    def setup(self, estimator: str) -> None:
        self.call = estimator_call(estimator, ppca_target(50), 1000, 64)

    def peakmem_estimate(self, estimator: str) -> None:
        self.call()
