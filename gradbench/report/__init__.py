"""Reports and run comparison (``gradbench report`` / ``gradbench compare``, docs/design.md §2.1, §10).

* :mod:`gradbench.report.data` reads a run folder (``results.parquet``, ``meeting_times.parquet``,
  ``run.json``) into a :class:`~gradbench.report.data.RunData` and derives, per cell, the
  *series* (estimator + its non-budget parameters) and the *budget* (K, S, …) that figures use.
* :mod:`gradbench.report.figures` draws seaborn figures for whatever metrics a run has.
* :mod:`gradbench.report.tables` builds the value ± s.e. tables (bias flagged at the run's α).
* :mod:`gradbench.report.render` writes ``index.html`` (self-contained), ``summary.md`` and the
  figures as PNG files.
* :mod:`gradbench.report.compare` aligns two runs by content and tests every metric's change.

Nothing here imports matplotlib at package import; the figure modules do, with the Agg backend.
"""

from __future__ import annotations

from gradbench.report.format import DEFAULT_ALPHA  # the one default significance level

__all__ = ["DEFAULT_ALPHA"]
