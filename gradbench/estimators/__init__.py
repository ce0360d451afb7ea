"""Gradient estimators, one family per file. Each estimator is a pure function

    estimator(target, R, gen, **params) -> GradSample

with a leading replicate dimension R, all randomness drawn from ``gen``, and its parameters
declared by a strict pydantic model. ``_template.py`` is the file to copy for a new family; the
one line that registers an estimator is in ``gradbench/registry.py``.
"""
