"""Speed measurement: gradbench side by side with its floors and peers, measured in one run.

Everything is timed in one process on one target (same model, data, proposal, dtype, device and
torch thread count), with the compared functions *interleaved* (A, B, A, B, ...) so a change in
machine load hits both sides alike; every figure is a median over the timed rounds.

The speed suite is an ordinary run suite (``gradbench run`` accepts it too) with one target and
an ``iwae`` estimator whose K is the K of the floors and of the Pyro comparison; its replicates are
the R of every vectorised call. How to time (threads, rounds, peers, loops) are settings
(:class:`SpeedSettings`, the command's options).

Measurements (E = R·K·N single-point log-joint evaluations of the compared call):
* **forward floor**: ``sample_proposal`` + one batched ``log_joint`` on E particles, no gradient.
* **floor (a)**: the forward floor + one backward pass to θ of the summed log-joint (targets with a pure model,
  ``model.log_joint(θ, x, z)``: PPCA, ``vae`` — one batched decoder forward + backward —, ``sbn``): the least
  a θ-gradient estimator that evaluates E particles must do. Targets without a pure model use the forward floor.
* **floor (b)**: the batched ``iwae`` gradient at the same K and the same E (evals/s).
* **per-replicate gradients**: the R weighted gradients [R, P] by the model's batched weighted surrogate
  (hand-written backpropagation, e.g. :meth:`gradbench.models.vae.VAE.weighted_grad_log_joint`) vs
  ``torch.func.vmap(grad(·))`` (:func:`vmap_weighted_grad`), on the same particles and weights.
* **iwae vs Pyro**: ``iwae`` for R replicates at once vs Pyro's ``RenyiELBO(alpha=0, vectorize_particles=True)``
  on the same PPCA or Bernoulli VAE (one replicate per call, one data point: RenyiELBO weighs whole particles),
  after checking that both give the same gradient for the same noise (:mod:`gradbench.peers.pyro_ppca`,
  :mod:`gradbench.peers.pyro_vae`).
* **one pair at a time**: a coupled estimator vectorised over R replicates vs the same function
  called R times with R = 1 (how public reference implementations run coupled chains).
* **per estimator**: evals/s and its fraction of floors (a) and (b) at the estimator's own E and K.
* **FLOP fraction** (``--flops``, :mod:`~gradbench.speed.flops`): achieved FLOP/s of each estimator's gradient
  (matrix-product FLOPs counted from the MLP shapes × the evaluations of the call) ÷ FLOP/s of one [n, n] matmul in
  the same dtype and thread count, per interleaved round (median, IQR, interval for the median); and seconds per
  evaluation of each estimator ÷ iwae's.

Goals (:data:`GOALS`) are printed beside each ratio: on PPCA, Pyro ÷ iwae ≥ 50 per replicate, loop ÷ vectorised
≥ 30, coupled evals/s ≥ 0.5 × floor (b), iwae time ≤ 3 × the forward floor; on the neural targets, iwae time ≤ 2 ×
floor (a), Pyro ÷ iwae ≥ 20 on the VAE. A suite with several targets is compared target by target in one
process. Timings depend on the machine and its load (the 1-minute load average is recorded before and after),
so they are reported, never asserted.

:func:`run_scaling` instead sweeps R, K, data dimension, hidden width and N around the suite's first target and
fits log-log slopes of seconds and peak memory.

Modules: :mod:`~gradbench.speed.timing` (interleaved timing, peak memory, log-log slopes),
:mod:`~gradbench.speed.floors`, :mod:`~gradbench.speed.peers` (Pyro), :mod:`~gradbench.speed.flops`, :mod:`~gradbench.speed.comparisons`
(:func:`run_speed`), :mod:`~gradbench.speed.scaling`, :mod:`~gradbench.speed.results` (:class:`SpeedReport`),
:mod:`~gradbench.speed.settings`. This package imports no click; the ``gradbench speed`` command lives in
:mod:`gradbench.speed.command` and turns :class:`SpeedError` into one line naming the suite, exit code 2.
"""

from gradbench.speed.comparisons import run_speed
from gradbench.speed.floors import (
    floor_a,
    floor_log_joint_backward,
    floor_sample_log_joint,
    has_backward_floor,
    vmap_weighted_grad,
)
from gradbench.speed.peers import check_pyro_agrees
from gradbench.speed.results import SpeedReport
from gradbench.speed.scaling import SCALING_AXES, SCALING_FACTORS, run_scaling, scaling_figure, scaling_markdown
from gradbench.speed.settings import GOALS, SpeedError, SpeedPlan, SpeedSettings, plan, plans
from gradbench.speed.timing import Measured, loglog_slope, median_ci, peak_memory_bytes, time_interleaved

__all__ = [
    "GOALS", "SCALING_AXES", "SCALING_FACTORS", "Measured", "SpeedError", "SpeedPlan", "SpeedReport", "SpeedSettings",
    "check_pyro_agrees", "floor_a", "floor_log_joint_backward", "floor_sample_log_joint", "has_backward_floor",
    "loglog_slope", "median_ci", "peak_memory_bytes", "plan", "plans", "run_scaling", "run_speed", "scaling_figure",
    "scaling_markdown", "time_interleaved", "vmap_weighted_grad",
]
