"""Print the discrete-estimator tables from a run folder: estimator × (rel. bias ± s.e. and its 95 % interval, p, q (BH over the
run), R·q_min (bias_rare_count), tr Σ ± s.e., SNR, work-normalised
variance, evaluations, seconds per estimate and tr Σ × seconds from the wallclock protocol, cell seconds). Usage: python reports/discrete-estimators/summarise.py RUN_DIR/results.parquet
With --toy, also the exact (Gauss–Legendre) expectation of the relaxed toy gradients and their relative bias."""

from __future__ import annotations

import argparse

import pandas as pd


def table(path: str) -> pd.DataFrame:
    d = pd.read_parquet(path)
    d = d[d.param_group == "all"].copy()
    par = [c for c in d.columns if c.startswith("estimator.") and d[c].notna().any()]

    def label(r: pd.Series) -> str:
        args = ",".join(f"{c[10:]}={r[c]:g}" if isinstance(r[c], float) else f"{c[10:]}={r[c]}"
                        for c in par if pd.notna(r[c]) and r[c] is not None)
        return f"{r.estimator}({args})"

    d["est"] = d.apply(label, axis=1)
    keys = ["target_id", "est"]
    m = d.pivot_table(index=keys, columns="metric", values=["value", "stderr"], aggfunc="first")
    out = pd.DataFrame(index=m.index)
    for c in ["rel_bias", "rel_bias_ci_low", "rel_bias_ci_high", "bias_pvalue", "bias_qvalue", "bias_rare_count", "trace_cov", "snr_median", "work_norm_var", "evals_mean", "seconds_per_estimate",
              "work_norm_var_seconds"]:
        if ("value", c) in m.columns:
            out[c] = m[("value", c)]
        if ("stderr", c) in m.columns and m[("stderr", c)].notna().any():
            out[c + "_se"] = m[("stderr", c)]
    out["cell_s"] = d.groupby(keys)["seconds"].first()
    return out


if __name__ == "__main__":
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 300)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("RESULTS", help="RUN_DIR/results.parquet")
    parser.add_argument("--toy", action="store_true", help="also the exact expectation of the relaxed toy gradients")
    args = parser.parse_args()
    print(table(args.RESULTS).to_string(float_format=lambda v: f"{v:.4g}"))
    if args.toy:
        from gradbench.models.bernoulli_toy import relaxed_expected_gradient

        exact = (1 - 2 * 0.499) * 0.25
        for st in (False, True):
            for tau in (0.1, 0.5, 1.0):
                v, err = relaxed_expected_gradient(0.0, 0.499, tau, st)
                print(f"{'straight_through' if st else 'gumbel_softmax'}(tau={tau}): E ĝ = {v:.6e} (± {err:.1e}), "
                      f"exact ∇ = {exact:.1e}, relative bias = {(v - exact) / exact:+.4f}")
