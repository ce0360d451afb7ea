"""Running a suite: plan → cells → compute → store, driven by the runner through an executor (docs/design.md §2.1).

* :mod:`~gradbench.run.plan` — a suite file read, validated and expanded into cells;
* :mod:`~gradbench.run.cells` — a cell and its target, its id, the identifying columns of its rows;
* :mod:`~gradbench.run.compute` — one cell computed by its kind (``registry.CELL_KINDS``), pure;
* :mod:`~gradbench.run.executors` — where cells compute (this process, Dask);
* :mod:`~gradbench.run.store` — the run folder (atomic writes, lock, references, targets, the collected table);
* :mod:`~gradbench.run.runner` — the loop tying them together; :mod:`~gradbench.run.cost` — ``validate --estimate``.

None of these modules knows a protocol or a kind of cell by name: they ask the registry's specs and kinds.
"""
