"""Data sets for targets: named bundled sets, user files, and data drawn from the model.

A suite's ``data:`` is either a path (``.npy``, ``.csv``, or an IDX file as MNIST ships it, optionally
gzipped) relative to the suite, or a mapping :class:`DataSpec`:

```yaml
data: {name: digits, split: train, n: 20, binarize: dynamic, seed: 0}
```
* ``digits`` — the 8×8 UCI handwritten digits that scikit-learn ships inside its wheel (1797 images,
  values 0..16, scaled to [0, 1]); no download.
* ``fashion_mnist`` — 28×28 images read from the files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``; ``GRADBENCH_FASHION_MNIST`` overrides the folder).
* ``synthetic`` — drawn from the model at the target's parameters (the model's ``sample_joint``).
* ``path`` — a user file, as above.

Splits are fixed and recorded: ``digits`` has no official split, so a permutation from a fixed seed
(``DIGITS_SPLIT_SEED``) puts 1497 images in ``train`` and 300 in ``test``; Fashion-MNIST (60 000 train,
10 000 test, all by default) and IDX pairs use their own train/test files. ``n`` takes the first n rows.

Binarisation of grey levels in [0, 1]:
* ``threshold`` (``static`` is the former spelling, still accepted): x = 1[pixel > ½];
* ``stochastic_fixed``: x ~ Bernoulli(pixel), one draw from the explicit ``seed`` when the data are loaded
  (Salakhutdinov & Murray 2008), the same binary rows for every estimator and every step;
* ``dynamic``: a fresh draw x ~ Bernoulli(pixel) for every training minibatch (the IWAE paper's dynamic
  binarisation, Burda et al. 2016), from the training step's seed (reproducible, resumable;
  :func:`dynamic_draw`). Only a training run has minibatches: there the data stay grey levels
  (:func:`load` with ``grey=True``) and the held-out points are one ``stochastic_fixed`` draw from ``seed``. A
  fixed target (every other cell) has one set of rows, so for it ``dynamic`` is the one draw from ``seed``
  (what ``stochastic_fixed`` draws; the meaning ``dynamic`` had for every cell before training runs re-drew);
* ``none`` keeps grey levels.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DIGITS_SPLIT_SEED = 20260101
DIGITS_TEST = 300
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
NAMED = ("digits", "fashion_mnist", "synthetic")


class DataError(ValueError):
    """A data set that cannot be read; the message says what to do (one line)."""


class DataSpec(BaseModel):
    """How a target's data rows are obtained (the ``data:`` mapping of a suite's target)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = Field(None, description="digits | fashion_mnist | synthetic")
    path: str | None = Field(None, description="a .npy, .csv or IDX (.gz) file, relative to the suite")
    split: Literal["train", "test"] = Field("train", description="which fixed split to read")
    n: int | None = Field(None, gt=0, description="first n rows of the split (default: all)")
    binarize: Literal["none", "threshold", "static", "stochastic_fixed", "dynamic"] = Field(
        "none", description="threshold (static) | stochastic_fixed (one draw from seed) | dynamic (a draw per training "
                            "minibatch) | none")
    seed: int = Field(0, ge=0, description="seed of the stochastic_fixed draw (and of dynamic's held-out draw)")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: magic 0x0000 type ndim, big-endian int32 sizes, raw data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def read_file(path: Path) -> np.ndarray:
    """Rows of a .npy, .csv or IDX file as float64 [N, d] (images flattened)."""
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found")
    name = path.name.removesuffix(".gz")
    if name.endswith(".npy"):
        arr = np.load(path)
    elif name.endswith(".csv"):
        arr = np.loadtxt(path, delimiter=",", ndmin=2)
    elif "idx" in name or name.endswith("ubyte"):
        arr = read_idx(path)
        arr = arr / 255.0 if arr.dtype == np.uint8 else arr
    else:
        raise DataError(f"{path}: unknown data format (use .npy, .csv or an IDX file)")
    arr = np.asarray(arr, dtype=np.float64)
    return arr.reshape(arr.shape[0], -1) if arr.ndim != 2 else arr


def digits(split: str) -> np.ndarray:
    """scikit-learn's bundled 8×8 digits in [0, 1], the fixed train (1497) / test (300) split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data 'digits' needs scikit-learn (it ships the images): pip install scikit-learn") from None
    x = load_digits().data.astype(np.float64) / 16.0
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    idx = perm[DIGITS_TEST:] if split == "train" else perm[:DIGITS_TEST]
    return x[idx]


def fashion_mnist(split: str) -> np.ndarray:
    folder = Path(os.environ.get("GRADBENCH_FASHION_MNIST", FASHION_MNIST_DIR))
    stem = "train" if split == "train" else "t10k"
    path = folder / f"{stem}-images-idx3-ubyte.gz"
    if not path.is_file():
        raise DataError(f"data 'fashion_mnist' not found at {path}: install the Debian package "
                        "(apt-get install dataset-fashion-mnist) or set GRADBENCH_FASHION_MNIST to a folder of its IDX files")
    return read_file(path)


def binarize(x: np.ndarray, how: str, seed: int) -> np.ndarray:
    """Binary rows from grey levels (module docstring); ``dynamic`` here is its fixed-target meaning, one draw."""
    if how == "none":
        return x
    if how in ("threshold", "static"):
        return (x > 0.5).astype(np.float64)
    if x.min() < 0 or x.max() > 1:
        raise DataError(f"{how} binarisation needs values in [0, 1]")
    u = np.random.default_rng(seed).random(x.shape)
    return np.less(u, x, out=u)  # 1.0 where u < pixel, in place: no second [N, d] array (60 000 × 784 on Fashion-MNIST)


def dynamic_draw(grey: Any, gen: Any) -> Any:
    """One dynamic binarisation of a minibatch: x_ij = 1[u_ij < grey_ij], u ~ U(0, 1) from ``gen`` (torch tensors;
    the result has grey's dtype and device). A fresh generator per training step makes it reproducible."""
    import torch

    u = torch.rand(grey.shape, generator=gen, dtype=grey.dtype, device=grey.device)
    return (u < grey).to(grey.dtype)


def load(spec: DataSpec, base: Path | None = None, *, grey: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """The data rows [n, d] of a spec (not ``synthetic``) and their provenance (recorded with the run).

    ``grey``: for ``binarize: dynamic``, the grey levels themselves (a training run binarises each minibatch)."""
    if (spec.name is None) == (spec.path is None):
        raise DataError("data: give exactly one of 'name' (digits, fashion_mnist, synthetic) or 'path'")
    if spec.name == "synthetic":
        raise DataError("synthetic data is drawn by the model, not loaded")
    if spec.name == "digits":
        x = digits(spec.split)
    elif spec.name == "fashion_mnist":
        x = fashion_mnist(spec.split)
    elif spec.name is not None:
        raise DataError(f"unknown data set {spec.name!r} (known: {', '.join(NAMED)}, or path: FILE)")
    else:
        x = read_file((base or Path.cwd()) / spec.path)  # type: ignore[operator]
    if spec.n is not None:
        if spec.n > len(x):
            raise DataError(f"data: n = {spec.n} but the {spec.split} split has {len(x)} rows")
        x = x[: spec.n]
    if grey and spec.binarize == "dynamic":
        if x.min() < 0 or x.max() > 1:
            raise DataError("dynamic binarisation needs values in [0, 1]")
    else:
        x = binarize(x, spec.binarize, spec.seed)
    prov = {"source": spec.name or str(spec.path), "split": spec.split, "rows": len(x), "dim": int(x.shape[1]),
            "binarize": spec.binarize, "binarize_seed": spec.seed,
            **({"binarized": "per training minibatch (grey levels stored)"} if grey and spec.binarize == "dynamic" else {}),
            "sha256": hashlib.sha256(memoryview(np.ascontiguousarray(x)).cast("B")).hexdigest()}
    return x, prov


def read_array_file(path: Path) -> np.ndarray:
    """A suite's ``data:`` file as float64 rows: ``.npy``, else comma-separated text (one row per line)."""
    arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    return np.asarray(arr, dtype=np.float64)
