"""Snapshot of every coupled estimator on small targets with fixed seeds, for a bitwise before/after comparison.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/coupled_snapshot.py save /tmp/coupled/before.pt   # old commit
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/coupled_snapshot.py compare /tmp/coupled/before.pt  # new

Covers coupled_isir (three index couplings, lags, k < m, k auto, no Rao–Blackwellisation, censoring), coupled_pimh,
on a PPCA target (no ``log_joint_at``) and a small VAE (packed path), the raw driver with and without per-point
packing and without estimate (pilot), and coupled_gibbs on an RBM (maximal, block_maximal) and an Ising model.
``compare`` checks every tensor bitwise (torch.equal on an integer view, so NaN rows compare), diagnostics included (the key sets of the new run may
be larger: new diagnostics are listed, not compared).
"""
import argparse
import sys

import torch

from gradbench import registry
from gradbench.estimators import coupled as C
from gradbench.models.ebm import RBM, Ising, IsingParams, NoProposal, RBMParams
from gradbench.seeding import make_generator
from tests.conftest import make_ppca


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN rows of censored replicates included), via an integer view of floats."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))
    return torch.equal(a, b)


def snapshot() -> dict[str, dict[str, torch.Tensor]]:
    vae = registry.MODELS["vae"]
    targets = {
        "ppca": make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0),
        "vae": vae.build(vae.params(latent_dim=2, data_dim=6, n_data=3, hidden=[8]), vae.proposal(mean_shift=0.5), 3,
                         torch.float64, "cpu", None),
    }
    configs = [{"K": 4}, {"K": 4, "lag": 2, "k": 2, "m": 5}, {"K": 8, "k": "auto", "pilot_replicates": 50},
               {"K": 3, "k": 1, "m": 3, "rao_blackwell": False}, {"K": 2, "max_iter": 3}]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for tname, t in targets.items():
        for est, extra in [("coupled_isir", [{"coupling": "maximal"}, {"coupling": "common_uniform"},
                                              {"coupling": "independent"}]), ("coupled_pimh", [{}])]:
            for cfg in configs:
                for ex in extra:
                    s = registry.ESTIMATORS[est].fn(t, 40, make_generator(0), **cfg, **ex)
                    out[f"{tname}/{est}/{cfg}{ex}"] = {"grads": s.grads, "cost": s.cost, **s.diagnostics}
        for kind in ["isir", "pimh"]:
            for pack in [False, True]:
                for est in [True, False]:
                    r = C.run_coupled(t, 30, make_generator(1), C._kind(kind), K=4, k=1, m=4, lag=2, rao_blackwell=True,
                                      max_iter=1000, with_estimate=est, pack_points=pack)
                    out[f"{tname}/run_coupled/{kind}/pack={pack}/est={est}"] = {
                        "grads": r.grads, "tau": r.tau_point, "met": r.met, "lockstep": torch.tensor(r.lockstep_evals)}
    ebms = {"rbm": RBM.build(RBMParams(n_visible=6, n_hidden=3, n_data=5, weight_scale=2.0), NoProposal(), 0, torch.float64),
            "ising": Ising.build(IsingParams(n_spins=6, n_data=5, weight_scale=1.5), NoProposal(), 0, torch.float64)}
    for tname, t in ebms.items():
        couplings = ["maximal", "block_maximal"] if tname == "rbm" else ["maximal"]
        for coupling in couplings:
            for cfg in [{}, {"S": 3, "k": 3, "m": 7, "lag": 2}, {"S": 2, "k": 1, "m": 1, "lag": 3}, {"k": 0, "max_iter": 2}]:
                s = registry.ESTIMATORS["coupled_gibbs"].fn(t, 40, make_generator(0), coupling=coupling, **cfg)
                out[f"{tname}/coupled_gibbs/{coupling}/{cfg}"] = {"grads": s.grads, "cost": s.cost, **s.diagnostics}
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description="Bitwise snapshot of every coupled estimator on small targets.")
    parser.add_argument("mode", choices=["save", "compare"], help="save a snapshot, or compare with a saved one")
    parser.add_argument("path", help="the snapshot file (torch.save)")
    args = parser.parse_args()
    mode, path = args.mode, args.path
    new = snapshot()
    if mode == "save":
        torch.save(new, path)
        print(f"saved {len(new)} runs to {path}")
    else:
        old = torch.load(path)
        bad = 0
        extra: set[str] = set()
        for key, tensors in old.items():
            for name, value in tensors.items():
                if not bitwise_equal(value, new[key][name]):
                    bad += 1
                    print(f"DIFFERENT: {key} {name}")
            extra |= set(new[key]) - set(tensors)
        n = sum(len(v) for v in old.values())
        print(f"{n - bad} of {n} tensors bitwise equal over {len(old)} runs; new keys not compared: {sorted(extra)}")
        sys.exit(1 if bad else 0)
