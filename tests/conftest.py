"""Shared fixtures, and the ``needs`` marker for optional data and tools.

``@pytest.mark.needs("fashion_mnist" | "chromium" | "pyro")``: the test is skipped, with the reason and how to
install the missing piece, when that is absent. ``.ci/run`` installs all three, so CI runs these tests; a fresh
checkout without them still passes the README's test command.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gradbench.models.ppca import PPCA, PPCAParams, ProposalParams


def fashion_mnist_folder() -> Path:
    """Where gradbench.data reads Fashion-MNIST: GRADBENCH_FASHION_MNIST, else the Debian package's folder."""
    from gradbench.data import FASHION_MNIST_DIR

    return Path(os.environ.get("GRADBENCH_FASHION_MNIST", FASHION_MNIST_DIR))


def browser() -> str | None:
    """The first headless-capable Chromium-family browser on PATH."""
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _pyro_available() -> bool:
    from gradbench.peers import pyro_ppca

    return pyro_ppca.available()


OPTIONAL: dict[str, tuple[Callable[[], bool], Callable[[], str]]] = {
    "fashion_mnist": (lambda: all((fashion_mnist_folder() / f"{s}-images-idx3-ubyte.gz").is_file() for s in ("train", "t10k")),
                      lambda: f"Fashion-MNIST not found at {fashion_mnist_folder()} (apt-get install dataset-fashion-mnist, "
                              "or set GRADBENCH_FASHION_MNIST to a folder of its IDX files)"),
    "chromium": (lambda: browser() is not None, lambda: "no chromium installed (apt-get install chromium)"),
    "pyro": (_pyro_available, lambda: "Pyro not installed (pip install 'gradbench[peers]')"),
}


SLOW_TIMEOUT_S = 7200  # per-test limit of ``-m slow`` studies (the default, pyproject's ``timeout``, is 600 s)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        for name in mark.args:
            present, reason = OPTIONAL[name]
            if not present():
                pytest.skip(reason())


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
