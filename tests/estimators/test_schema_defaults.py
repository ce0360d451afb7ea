"""Defaults are stated once: a suite that leaves a parameter out and a direct call that leaves it out run the
same estimator.

Every registered estimator has a pydantic schema (what a suite may set, with its default) and a function
(``fn(target, R, gen, **params)``). Where the function also names a parameter with a default, the two defaults
must be equal; otherwise a suite run (which passes the schema's dumped defaults) and a notebook call (which gets
the function's) silently compute different estimators. Pinned defaults: the MCMC-based estimators
Rao–Blackwellise (``rao_blackwell=True``), as the coupled module's docstring and the README state.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from gradbench.registry import ESTIMATORS

# keyword parameters a function takes that are deliberately not suite parameters (runtime state, not settings)
NOT_IN_SCHEMA = {"density_ratio": {"state"}}


def _keyword_defaults(fn) -> dict[str, object]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty}


def _takes_var_keywords(fn) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_schema_defaults_equal_function_defaults(name):
    """For each registered estimator: every keyword default of its function that is a schema field equals the
    schema's default; a function with explicit keywords takes every schema field (no suite parameter is dropped
    on the way) and no keyword outside the schema but its stated runtime ones."""
    entry = ESTIMATORS[name]
    fields = entry.params.model_fields
    kw = _keyword_defaults(entry.fn)
    for key in kw.keys() & fields.keys():
        field = fields[key]
        assert not field.is_required(), f"{name}.{key}: the function has a default, the schema none"
        assert kw[key] == field.get_default(call_default_factory=True), \
            f"{name}.{key}: schema default {field.default!r} ≠ function default {kw[key]!r}"
    if kw and not _takes_var_keywords(entry.fn):
        assert set(fields) <= set(kw), f"{name}: schema fields the function does not take: {set(fields) - set(kw)}"
        assert set(kw) - set(fields) <= NOT_IN_SCHEMA.get(name, set()), f"{name}: {set(kw) - set(fields)}"


def test_schema_default_check_sees_a_disagreement(monkeypatch):
    """Negative control: flipping one function default (pimh's rao_blackwell) makes the check fail."""
    from gradbench.estimators import coupled

    def pimh(target, R, gen, *, K: int = 8, t: int = 1, rao_blackwell: bool = False):
        raise NotImplementedError

    monkeypatch.setattr(coupled, "pimh", pimh)
    with pytest.raises(AssertionError, match="rao_blackwell"):
        test_schema_defaults_equal_function_defaults("pimh")


@pytest.mark.parametrize("name", ["pimh", "isir", "coupled_pimh", "coupled_isir"])
def test_mcmc_estimators_rao_blackwellise_by_default(name):
    """The schema default and (where the function names it) the function default are rao_blackwell=True."""
    entry = ESTIMATORS[name]
    assert entry.params().rao_blackwell is True
    kw = _keyword_defaults(entry.fn)
    assert kw.get("rao_blackwell", True) is True


@pytest.mark.parametrize("name, params", [("coupled_isir", {"K": 4, "k": 1, "m": 2}), ("pimh", {"K": 4, "t": 2})])
def test_default_run_is_the_rao_blackwellised_run(ppca, name, params):
    """Behavioural pin: with the same seed the default call returns exactly the rao_blackwell=True gradients and not
    the rao_blackwell=False ones (the control: the two settings differ on these draws)."""
    fn = ESTIMATORS[name].fn

    def grads(**extra) -> torch.Tensor:
        return fn(ppca, 8, torch.Generator().manual_seed(0), **params, **extra).grads

    default, rb, plain = grads(), grads(rao_blackwell=True), grads(rao_blackwell=False)
    assert torch.equal(default, rb)
    assert not torch.allclose(default, plain)
