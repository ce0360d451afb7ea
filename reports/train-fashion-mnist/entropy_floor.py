"""The entropy floor of stochastically binarised Fashion-MNIST: no model's held-out log-likelihood can exceed it.

A binarised test image is drawn as: a grey image G from the test set, then pixels X_j ~ Bernoulli(G_j) independently
(the fixed stochastic binarisation of the held-out rows, and the dynamic one of training). For any model p,

    E[−log p(X)] = H(X) + KL(P_X ‖ p) ≥ H(X) ≥ H(X | G) = E_G Σ_j H_b(G_j),   H_b(g) = −g log g − (1 − g) log(1 − g)

(conditioning does not increase entropy; Cover & Thomas, Elements of Information Theory, Thm 2.6.5). So the expected
held-out log-likelihood is at most −E_G Σ_j H_b(G_j), computed here exactly over the test images (the ± is the s.e.
of that mean over images, for reading it as an estimate of the population's). Thresholded (static) binarisation has
no such floor: its pixels are deterministic given the image.

    OMP_NUM_THREADS=1 python reports/train-fashion-mnist/entropy_floor.py [N_FIRST]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from gradbench.data import fashion_mnist


def bernoulli_entropy(g: np.ndarray) -> np.ndarray:
    """H_b(g) in nats, elementwise (0 at g ∈ {0, 1})."""
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(g * np.log(g) + (1 - g) * np.log1p(-g))
    return np.nan_to_num(h, nan=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_first", type=int, nargs="?", default=1000, help="also report the first N test images")
    args = parser.parse_args()
    for split in ("test", "train"):
        h = bernoulli_entropy(np.asarray(fashion_mnist(split), dtype=np.float64)).sum(1)
        for name, part in ((f"all {h.size}", h), (f"first {args.n_first}", h[: args.n_first])):
            se = part.std(ddof=1) / math.sqrt(part.size)
            print(f"{split} ({name} images): E_G Σ_j H_b(G_j) = {part.mean():.2f} ± {se:.2f} nats per image "
                  f"→ held-out log-likelihood ≤ {-part.mean():.2f}")


if __name__ == "__main__":
    main()
