"""The ``snr`` protocol's spec: rows from :mod:`gradbench.protocols.snr` and their views. Its median ``snr_q50``
(and quartile band) is drawn by the ``snr_vs_budget`` figure and shown in the report's SNR column, both listed
with the ``variance`` protocol, whose ``snr_median`` they show otherwise."""

from __future__ import annotations

from gradbench.protocols.spec import MIN_REPLICATES, ProtocolSpec, Rule, TerminalTable, code
from gradbench.terminal import band_column, pm_column

METRICS = {
    "snr_q25": "25 % quantile over the group's coordinates of |ḡ_j|/s_j",
    "snr_q50": "median over the group's coordinates of |ḡ_j|/s_j (bootstrap s.e.)",
    "snr_q75": "75 % quantile over the group's coordinates of |ḡ_j|/s_j",
}


def terminal(metrics: set[str], correction: str, alpha: float) -> TerminalTable:
    return TerminalTable([pm_column("SNR median ± s.e.", "snr_q50"), band_column("[q25, q75] over j", "snr_q25", "snr_q75")],
                         "|E ĝⱼ|/sd(ĝⱼ): median over the coordinates j of the group (bootstrap s.e.) and its quartiles",
                         per_group=True)


SPEC = ProtocolSpec(
    "snr", code("gradbench.protocols.snr:snr"),
    "snr_q25, snr_q50, snr_q75: quartiles over coordinates of |E ĝ|/sd(ĝ) per group", False,
    min_replicates=MIN_REPLICATES,
    metrics=METRICS,
    terminal=terminal,
    rules={"snr_q50": Rule("ratio", -1)},
    figures=(),  # snr_vs_budget (variance's spec) draws snr_q50 with the [q25, q75] band
)
