"""Protocols turn a GradSample (+ the reference) into tidy metric rows with standard errors.

A protocol is ``protocol(sample, reference, ctx) -> list[Row]``; metric names follow docs/design.md §9.
Non-finite replicates are excluded from every moment and counted in ``ctx``'s caller.

Each protocol is one vertical: ``<name>.py`` computes its rows and ``<name>_spec.py`` holds its
:class:`~gradbench.protocols.spec.ProtocolSpec` (run-level rows, side tables, terminal table, report
columns, compare rules, figures), the object the registry lists. This package imports neither numpy
nor torch at import, so the registry (and ``gradbench list``/``validate``) can load every spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NotRequired, TypedDict

if TYPE_CHECKING:
    import numpy as np

    from gradbench.core import GradSample, ParamLayout


class Row(TypedDict):
    param_group: str
    metric: str
    value: float
    stderr: float
    method: str
    warning: NotRequired[str]  # a caveat on this row only (the runner joins it with the cell's warnings)


def row(group: str, metric: str, value: float, stderr: float, method: str = "", warning: str = "") -> Row:
    out = Row(param_group=group, metric=metric, value=float(value), stderr=float(stderr), method=method)
    if warning:
        out["warning"] = warning
    return out


@dataclass(frozen=True)
class ProtocolContext:
    """Everything a protocol may need besides the sample: an explicit RNG seed for resampling,
    the machine epsilon of the estimator's dtype (the resolution of its output), the cell's device,
    and ``rerun(R)``, which runs the cell's estimator again for R replicates on a fresh generator
    (set by the runner; timing protocols such as ``wallclock`` need it)."""

    seed: int
    eps: float
    device: str = "cpu"
    rerun: Callable[[int], GradSample] | None = None
    atoms: bool = False  # the target's latents (or states) are discrete: replicate gradients may have rare atoms
    rare_q_min: float | None = None  # smallest probability of a gradient-carrying value (gradbench.stats.rare_state_verdict)


@dataclass(frozen=True)
class FiniteSample:
    """Float64 numpy view of the finite replicates of a GradSample."""

    G: np.ndarray
    cost: np.ndarray
    n_nonfinite: int

    @staticmethod
    def of(sample: GradSample) -> FiniteSample:
        """Made once per sample and shared by every protocol of the cell (P reaches 10⁵–10⁶ for neural
        models: one float64 [R, P] copy per cell, not one per protocol). Protocols must not modify ``G``."""
        cached = getattr(sample, "_finite_sample", None)
        if cached is not None:
            return cached
        ok = ~sample.diagnostics["nonfinite"].cpu().numpy()
        G = sample.grads.detach().cpu().double().numpy()
        G = G if ok.all() else G[ok]
        G.setflags(write=False)
        cost = sample.cost.detach().cpu().double().numpy()[ok]
        fs = FiniteSample(G, cost, int((~ok).sum()))
        object.__setattr__(sample, "_finite_sample", fs)
        return fs


def group_slices(layout: ParamLayout) -> dict[str, slice]:
    """``all`` first, then each parameter group in layout order."""
    return {"all": slice(None), **layout.slices()}
