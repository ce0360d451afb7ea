"""Training as its own kind of cell (docs/design.md §6.10): does an estimator's bias or variance change the model you
end up with?

* :mod:`~gradbench.training.params` — the schema of a run (torch-free) and what it needs of its target;
* :mod:`~gradbench.training.cell` — the cell kind ``train``: the target it trains on, its rows and curves;
* :mod:`~gradbench.training.loop` — the training loop and held-out evaluation of latent-variable models;
* :mod:`~gradbench.training.ebm` — θ-only training of energy-based models;
* :mod:`~gradbench.training.snapshots` — (θ, φ) kept at chosen steps, and targets built from them;
* :mod:`~gradbench.training.stats` — arms compared across training seeds (paired tests);
* :mod:`~gradbench.training.figures` — the report's figures and tables of training runs.
"""
