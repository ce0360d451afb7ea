"""A target's float32 twin and that twin's exact float64 copy, for the tests that check a reference builder computes
in float64 whatever the target's dtype (tests/references/test_enumeration.py, test_quadrature.py)."""

from __future__ import annotations

import torch

from gradbench.contracts import Target


def _cast(params: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: value.detach().to(dtype) for name, value in params.items()}


def float32_twins(target: Target) -> tuple[Target, Target]:
    """(t32, t64): ``target`` with θ, φ and x rounded to float32, and t32's values cast back to float64 (exactly:
    every float32 is a float64), so the two hold the same numbers in two dtypes."""
    t32 = target.at(theta=_cast(target.theta, torch.float32), phi=_cast(target.phi, torch.float32),
                    x=target.x.to(torch.float32))
    t64 = t32.at(theta=_cast(t32.theta, torch.float64), phi=_cast(t32.phi, torch.float64), x=t32.x.to(torch.float64))
    return t32, t64
