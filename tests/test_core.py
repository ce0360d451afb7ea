"""GradSample's automatic ``nonfinite`` flag (a per-row sum, re-checked exactly where the sum is not finite)."""

from __future__ import annotations

import torch

from gradbench.core import GradSample, ParamGroup, ParamLayout


def test_nonfinite_flags_exactly_the_rows_with_a_nan_or_inf():
    layout = ParamLayout((ParamGroup("a", (3,)),))
    g = torch.zeros(6, 3, dtype=torch.float64)
    g[1, 0], g[2, 2], g[4, 1] = float("nan"), float("-inf"), float("inf")
    g[3, :2] = torch.tensor([1e308, 1e308], dtype=torch.float64)  # finite entries whose sum overflows: not flagged
    g[5] = torch.tensor([1e308, -1e308, 1.0], dtype=torch.float64)
    flag = GradSample(g, layout, torch.ones(6)).diagnostics["nonfinite"]
    assert flag.tolist() == [False, True, True, False, True, False]
    assert torch.equal(flag, ~torch.isfinite(g).all(dim=1))  # the definition
