"""One look for every figure: seaborn theme, estimator colours, metric labels with units.

Colours are a function of the estimator *name* only, so an estimator has the same colour in
every figure of a report and in every report: registered estimators have a fixed colour (mostly
seaborn's colour-blind palette, with related estimators in related hues: iwae/iwae_reparam blue,
pimh/coupled_pimh pink/purple); any other name gets a colour from a hash of the name (stable
across runs, processes and Python versions).
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

FIXED_COLORS = {
    "exact": "#4d4d4d", "oracle": "#029e73", "elbo": "#de8f05", "iwae": "#0173b2", "pimh": "#cc78bc",
    "coupled_pimh": "#8c2d7e", "isir": "#56b4e9", "coupled_isir": "#d55e00", "sumo": "#ca9161",
    "reparam_elbo": "#e6ab02", "stl": "#66a61e", "iwae_reparam": "#3949ab", "dreg": "#e7298a",
    "reinforce": "#a6761d", "vimco": "#7570b3",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def estimator_color(name: str) -> str:
    """Hex colour of an estimator, stable across figures and runs."""
    return FIXED_COLORS.get(name) or _hash_color(name)


def _hash_color(name: str) -> str:
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") / 2**32
    r, g, b = colorsys.hls_to_rgb(h, 0.45, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


# metric -> (axis label with unit, higher is better?)
METRIC_LABELS: dict[str, str] = {
    "bias_norm": "bias ‖ḡ − g*‖ (gradient units)",
    "rel_bias": "relative bias ‖ḡ − g*‖ / ‖g*‖",
    "bias_pvalue": "bias p-value (H0: unbiased)",
    "bias_zmax": "max |z| over coordinates",
    "trace_cov": "variance tr Σ̂ (gradient units²)",
    "mean_var": "mean per-coordinate variance (gradient units²)",
    "snr_median": "median SNR |E ĝ| / sd(ĝ)",
    "snr_q50": "median SNR |E ĝ| / sd(ĝ)",
    "mse": "MSE ‖b‖² + tr Σ (gradient units²)",
    "evals_mean": "cost (log-joint evaluations per estimate)",
    "work_norm_var": "work-normalised variance tr Σ̂ × cost (gradient units² × evals)",
    "tau_mean": "mean meeting time τ (iterations)",
    "seconds_per_estimate": "wall-clock per estimate (seconds)",
    "evals_per_second": "throughput (log-joint evaluations per second)",
    "work_norm_var_seconds": "time-normalised variance tr Σ̂ × seconds (gradient units² × s)",
}


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


@contextmanager
def theme() -> Iterator[None]:
    """seaborn 'whitegrid' look, applied only inside the block (no global state is changed)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    rc = {
        **sns.axes_style("whitegrid"),
        **sns.plotting_context("notebook", font_scale=1.0),  # ≥ 9 pt text in the 2×4 grids at 200 dpi
        "figure.dpi": 100,
        "axes.titleweight": "bold",
        "legend.frameon": False,
        "font.family": "DejaVu Sans",
    }
    with plt.rc_context(rc):
        yield
