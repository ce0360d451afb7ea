"""ComposedTarget's per-row data subsets (``log_joint_at`` & co., the coupled driver's per-point compaction).

Tier 1 (exact up to rounding): on a VAE and an SBN (models with ``batched_data``: x broadcast per row) and on the
same VAE without the flag (the ``torch.func.vmap`` path), the subset evaluations equal the full evaluation read
at the chosen points. Negative control: the same comparison rejects points read in the wrong order.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gradbench import registry
from gradbench.models.vae import VAE
from gradbench.seeding import make_generator


class _UnbatchedVAE(VAE):
    batched_data = False  # forces the vmap fallback of ComposedTarget


def _vae(batched: bool = True):
    entry = registry.MODELS["vae"]
    t = entry.build(entry.params(latent_dim=2, data_dim=6, n_data=4, hidden=[5]), entry.proposal(mean_shift=0.5), 3,
                    torch.float64, "cpu", None)
    if batched:
        return t
    m = t.model
    return dataclasses.replace(t, model=_UnbatchedVAE(m.latent_dim, m.data_dim, m.hidden, m.activation, m.likelihood),
                               phi=t.phi)


def _sbn():
    entry = registry.MODELS["sbn"]
    return entry.build(entry.params(layers=[3], conditionals="mlp", hidden=4, data_dim=5, n_data=4),
                       entry.proposal(), 3, torch.float64, "cpu", None)


TARGETS = {"vae": lambda: _vae(True), "vae-vmap": lambda: _vae(False), "sbn": _sbn}


def _full_at(t, z, points):
    """Reference: every row r evaluated on all N points, read at points[r] (z [R', S, W, k] placed there)."""
    R, S, W, k = z.shape
    zf, _ = t.sample_proposal((R, S), make_generator(1))  # [R, S, N, k]; the other points are filler
    zf = zf.clone()
    idx = points[:, None, :, None].expand(R, S, W, k)
    zf.scatter_(2, idx, z)
    return zf, idx


@pytest.mark.parametrize("name", TARGETS)
def test_subset_evaluations_equal_the_full_ones(name):
    t = TARGETS[name]()
    g = make_generator(0)
    R, S, W = 5, 3, 2
    points = torch.stack([torch.randperm(t.n_data, generator=g)[:W] for _ in range(R)])  # distinct per row
    z = t.sample_proposal((R, S), g)[0][:, :, :W]  # any latents of the right kind
    w = torch.rand(R, S, W, generator=g, dtype=torch.float64)
    zf, idx = _full_at(t, z, points)
    wf = torch.zeros(R, S, t.n_data, dtype=torch.float64).scatter_(2, idx[..., 0], w)
    expected_lp = t.log_joint(zf).gather(2, idx[..., 0])
    expected_grad = t.weighted_grad_log_joint(zf, wf)
    torch.testing.assert_close(t.log_joint_at(z, points), expected_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t.weighted_grad_log_joint_at(z, w, points), expected_grad, rtol=1e-12, atol=1e-12)
    lp, grad = t.log_joint_with_grad_at(z, points)
    torch.testing.assert_close(lp, expected_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad(w), expected_grad, rtol=1e-12, atol=1e-12)
    # negative control: the same comparison rejects the points read in reverse order within each row
    assert not torch.allclose(t.log_joint_at(z, points.flip(1)), expected_lp, rtol=1e-12, atol=1e-12)
