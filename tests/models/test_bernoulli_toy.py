"""The bernoulli_toy target: closed-form reference, its registry entry, and the relaxed-gradient quadrature."""

from __future__ import annotations

import pytest
import torch

from gradbench import registry
from gradbench.models import bernoulli_toy as toy
from gradbench.models.params import BernoulliToyParams


def test_registry_builds_the_toy_with_the_closed_form_reference():
    entry = registry.MODELS["bernoulli_toy"]
    t = entry.build(entry.params(dim=2, t=0.3, logit=1.0), entry.proposal(), 0, torch.float64, "cpu", None)
    p = torch.sigmoid(torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(t.reference("phi_elbo").value, torch.full((2,), 0.4 * float(p * (1 - p)), dtype=torch.float64))
    assert t.capabilities >= {"score", "log_prob", "binary_latent"} and "reparam" not in t.capabilities
    with pytest.raises(ValueError):
        t.reference("theta")


def test_spread_gives_distinct_logits():
    t = toy.build(BernoulliToyParams(dim=3, logit=0.5, logit_spread=2.0))
    torch.testing.assert_close(t.phi["logits"], torch.tensor([[-0.5, 0.5, 1.5]], dtype=torch.float64))


@pytest.mark.parametrize("st", [False, True])
def test_relaxed_quadrature_equals_the_closed_form_at_tau_one(st):
    """At φ = 0, τ = 1: s = 1 − u ~ U(0,1), E 2(s − t)s(1 − s) = (1 − 2t)/6; ST's extra term E (H − s)s(1 − s) is 0
    by the symmetry s ↔ 1 − s."""
    value, err = toy.relaxed_expected_gradient(0.0, 0.499, 1.0, st)
    assert err < 1e-14 and abs(value - (1 - 2 * 0.499) / 6) < 1e-15
