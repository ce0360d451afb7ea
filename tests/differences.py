"""Central differences of a scalar function of a parameter dictionary, along its flattened layout: the
independent check of an autograd or quadrature gradient that several test modules use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def central_differences(value: Callable[[Any], torch.Tensor | float], layout: Any, params: Any,
                        h: float = 1e-5) -> torch.Tensor:
    """(f(p + h e_i) − f(p − h e_i)) / 2h for every coordinate i of ``layout.flatten(params)``: error O(h²)."""
    flat = layout.flatten(params)
    out = torch.empty_like(flat)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        out[i] = (float(value(layout.unflatten(flat + e))) - float(value(layout.unflatten(flat - e)))) / (2 * h)
    return out
