"""gradbench: benchmark suite and gradient-variance analyser for Monte Carlo gradient estimators."""

__version__ = "0.1.0"
