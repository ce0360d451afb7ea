"""The ``snr`` protocol: per-parameter SNR quartiles with bootstrap s.e., and log-log slopes over K."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from gradbench import registry
from gradbench.core import GradSample, ParamGroup, ParamLayout
from gradbench.estimators import pathwise
from gradbench.protocols import ProtocolContext
from gradbench.protocols.snr import bootstrap_snr_quantiles, loglog_slope, loglog_slopes, snr
from gradbench.seeding import make_generator
from tests.models.test_ppca_encoder import make_encoder_target

ALPHA = 0.001
Z = 3.29  # two-sided z_{1−α/2}, α = 0.001
LAYOUT = ParamLayout((ParamGroup("a", (4,)), ParamGroup("b", (5,))))
TRUE_SNR = np.array([0.2, 0.5, 1.0, 2.0, 0.1, 0.3, 0.6, 1.2, 3.0])


def _sample(n: int, seed: int, snr_values: np.ndarray = TRUE_SNR) -> GradSample:
    """Gaussian replicates with sd 2 and mean ± 2·SNR (known per-coordinate SNR)."""
    rng = np.random.default_rng(seed)
    signs = np.where(np.arange(snr_values.size) % 2 == 0, 1.0, -1.0)
    G = 2.0 * signs * snr_values + 2.0 * rng.standard_normal((n, snr_values.size))
    return GradSample(torch.from_numpy(G), LAYOUT, torch.ones(n, dtype=torch.float64), wrt="phi_elbo")


def _rows(sample: GradSample, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(snr(sample, None, ProtocolContext(seed=seed, eps=2.2e-16)))


def test_rows_names_and_groups():
    df = _rows(_sample(500, 0))
    assert set(df.metric) == {"snr_q25", "snr_q50", "snr_q75"}
    assert list(dict.fromkeys(df.param_group)) == ["all", "a", "b"]
    assert (df.stderr > 0).all() and (df.method == "bootstrap(200)").all()
    q = df.set_index(["param_group", "metric"]).value
    assert q["all", "snr_q25"] <= q["all", "snr_q50"] <= q["all", "snr_q75"]
    assert registry.PROTOCOLS["snr"].fn is snr


@pytest.mark.parametrize("group,sl", [("all", slice(None)), ("a", slice(0, 4)), ("b", slice(4, 9))])
def test_quartiles_recover_the_true_snr(group, sl):
    """MCSE-scaled (α = 0.001, seed 1): |estimate − truth| / bootstrap s.e. < 3.29 for each quartile.

    n = 20 000 keeps the upward bias of |ḡ|/sd (≈ 1/(2 n SNR) for large SNR) far below the s.e.
    Negative control: the same test rejects the quartiles of a sample whose SNRs are 20 % lower.
    """
    df = _rows(_sample(20_000, 1)).set_index(["param_group", "metric"])
    shrunk = _rows(_sample(20_000, 1, TRUE_SNR * 0.8)).set_index(["param_group", "metric"])
    for metric, q in [("snr_q25", 0.25), ("snr_q50", 0.5), ("snr_q75", 0.75)]:
        truth = float(np.quantile(TRUE_SNR[sl], q))
        est, se = df.loc[(group, metric)].value, df.loc[(group, metric)].stderr
        assert abs(est - truth) / se < Z, (group, metric, est, truth, se)
        bad = shrunk.loc[(group, metric)]
        assert abs(bad.value - truth) / bad.stderr > Z


def test_bootstrap_standard_error_is_calibrated():
    """The bootstrap s.e. of the median SNR matches its spread over 40 independent samples (seeds 100–139).

    With 40 repeats the sample sd has relative s.e. ≈ 1/√80 ≈ 11 %: accept a ratio in [0.6, 1.6].
    """
    meds, ses = [], []
    for seed in range(100, 140):
        G = _sample(400, seed).grads.numpy()
        (value, se), = [bootstrap_snr_quantiles(G, {"all": slice(None)}, np.random.default_rng(seed), [0.5])["all"][0]]
        meds.append(value)
        ses.append(se)
    ratio = float(np.mean(ses) / np.std(meds, ddof=1))
    assert 0.6 < ratio < 1.6, ratio


def test_degenerate_coordinates():
    """Zero variance: SNR = inf with a non-zero mean, left out (0/0) with a zero mean; no warnings."""
    G = np.zeros((50, 9))
    G[:, 0] = 1.0  # constant non-zero: inf
    G[:, 4:] = np.random.default_rng(0).standard_normal((50, 5))
    with np.errstate(all="raise"):
        out = bootstrap_snr_quantiles(G, {"a": slice(0, 4), "b": slice(4, 9), "zeros": slice(1, 4)},
                                      np.random.default_rng(0))
    assert out["a"][1][0] == math.inf  # a = [inf, nan, nan, nan]: every quantile is inf
    assert all(math.isnan(v) for v, _ in out["zeros"])
    assert all(math.isfinite(v) for v, _ in out["b"])
    sample = GradSample(torch.from_numpy(G[:1]), LAYOUT, torch.ones(1, dtype=torch.float64))
    assert snr(sample, None, ProtocolContext(seed=0, eps=2.2e-16)) == []


def test_loglog_slope_recovers_a_power_law():
    K = np.array([1, 4, 16, 64, 256], dtype=float)
    slope, se = loglog_slope(K, 3.0 * K**-0.5, 0.01 * 3.0 * K**-0.5)
    assert abs(slope + 0.5) < 1e-12 and se > 0
    table = pd.DataFrame({"estimator": "e", "param_group": "all", "metric": "snr_q50", "estimator.K": K,
                          "value": 2.0 * K**0.5, "stderr": 0.1 * K**0.5})
    out = loglog_slopes(table, by=("estimator",))
    assert out.slope.iloc[0] == pytest.approx(0.5) and out.n_points.iloc[0] == 5


def test_iwae_snr_trends_on_ppca():
    """Reduced CI version of the Rainforth et al. study (seed 3, α = 0.001, one-sided slope tests).

    On the encoder target of suites/encoder-snr-vs-k.yaml, over K ∈ {4, 16, 64} (R = 1000;
    K = 1 sits in the curved, pre-asymptotic part of the log-log relation): the IWAE θ-SNR
    slope is > 0 and the IWAE φ-SNR slope is < 0, each by more than 3.09 s.e.; DReG's φ-SNR slope
    exceeds IWAE's by more than 3.09 s.e. (combined). Negative control: the same θ test on a
    deliberately K-independent estimator (K = 1 at every "K") must not find a positive slope.
    """
    t = make_encoder_target(d=5, k=2, n=4, mean_noise=1.0, log_std_shift=0.5, seed=3)
    Ks = [4, 16, 64]
    rows = []
    for K in Ks:
        for name, sample in [("iwae_theta", pathwise.iwae_reparam(t, 1000, make_generator(K), K=K, wrt="theta")),
                             ("iwae_phi", pathwise.iwae_reparam(t, 1000, make_generator(K), K=K)),
                             ("dreg", pathwise.dreg(t, 1000, make_generator(K), K=K)),
                             ("control", pathwise.iwae_reparam(t, 1000, make_generator(K), K=1, wrt="theta"))]:
            for r in snr(sample, None, ProtocolContext(seed=K, eps=2.2e-16)):
                rows.append({"estimator": name, "estimator.K": K, **r})
    slopes = loglog_slopes(pd.DataFrame(rows), by=("estimator",)).query("param_group == 'all'").set_index("estimator")
    s = slopes.slope
    se = slopes.slope_se
    assert s["iwae_theta"] / se["iwae_theta"] > 3.09
    assert s["iwae_phi"] / se["iwae_phi"] < -3.09
    assert (s["dreg"] - s["iwae_phi"]) / math.hypot(se["dreg"], se["iwae_phi"]) > 3.09
    assert not s["control"] / se["control"] > 3.09


@pytest.mark.slow
def test_slow_iwae_snr_slopes_match_rainforth():
    """The asymptotic end of the study: K ∈ {64, 256}, R = 20 000 (seed 3): each slope within z_{α/2}
    of its own s.e. of ±½ (α = 0.001; Rainforth et al. 2018: SNR_θ = O(√K), SNR_φ = O(1/√K)).
    Negative control: the K-independent estimator (K = 1 at every "K") is rejected against +½."""
    t = make_encoder_target(d=5, k=2, n=4, mean_noise=1.0, log_std_shift=0.5, seed=3)
    rows = []
    for K in [64, 256]:
        for name, kw in [("theta", {"wrt": "theta", "K": K}), ("phi", {"K": K}), ("control", {"wrt": "theta", "K": 1})]:
            sample = pathwise.iwae_reparam(t, 20_000, make_generator(K), **kw)
            for r in snr(sample, None, ProtocolContext(seed=K, eps=2.2e-16)):
                rows.append({"estimator": name, "estimator.K": K, **r})
    fit = loglog_slopes(pd.DataFrame(rows), by=("estimator",)).query("param_group == 'all'").set_index("estimator")
    z = sps.norm.isf(0.001 / 2)
    assert abs(fit.slope["theta"] - 0.5) < z * fit.slope_se["theta"]
    assert abs(fit.slope["phi"] + 0.5) < z * fit.slope_se["phi"]
    assert abs(fit.slope["control"] - 0.5) > z * fit.slope_se["control"]
