from __future__ import annotations

import pytest
import torch

from gradbench.models.ppca import PPCA, PPCAParams, ProposalParams


def make_ppca(d: int = 6, k: int = 2, n: int = 3, mean_shift: float = 0.0, cov_scale: float = 1.0,
              seed: int = 11, dtype: torch.dtype = torch.float64) -> PPCA:
    return PPCA.synthetic(PPCAParams(data_dim=d, latent_dim=k, n_data=n), ProposalParams(mean_shift=mean_shift, cov_scale=cov_scale),
                          seed=seed, dtype=dtype)


@pytest.fixture
def ppca() -> PPCA:
    return make_ppca()


@pytest.fixture
def mismatched_ppca() -> PPCA:
    """The demo suite's regime: one data point, d=10, k=3, δ=0.5, s=2."""
    return make_ppca(d=10, k=3, n=1, mean_shift=0.5, cov_scale=2.0, seed=3)
