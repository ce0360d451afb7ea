"""Dask executor: same table as the local executor, bitwise; a killed worker loses and duplicates
nothing; runs resume across executors; wall-clock cells run alone, after the others."""

from __future__ import annotations

import os
import signal
import threading

import pandas as pd
import pytest

from gradbench.run.compute import compute_cell
from gradbench.run.executors import DaskExecutor, LocalExecutor, is_timed
from gradbench.run.plan import load_suite
from gradbench.run.runner import run_suite
from gradbench.run.store import PROVENANCE
from tests.run.test_plan import write

distributed = pytest.importorskip("distributed")

SUITE = """\
name: slow
seed: 3
replicates: 1500
targets:
  - model: ppca
    params: {data_dim: 10, latent_dim: 3, n_data: 1}
    proposal: {mean_shift: 0.5, cov_scale: 2.0}
estimators:
  - name: oracle
    params: {S: [1, 2]}
  - name: iwae
    params: {K: [200, 201, 202, 203, 204, 205]}
protocols: [bias, variance]
"""


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    suite, cells = load_suite(write(tmp, SUITE))
    return run_suite(suite, cells, tmp / "out", progress=False).table.drop(columns=PROVENANCE)


def test_dask_table_equals_local_bitwise(cluster, local_table, tmp_path):
    suite, cells = load_suite(write(tmp_path, SUITE))
    summary = run_suite(suite, cells, tmp_path / "out", progress=False, executor=DaskExecutor(cluster.scheduler_address))
    assert summary.ran == len(cells) == 8 and not summary.failed
    pd.testing.assert_frame_equal(summary.table.drop(columns=PROVENANCE), local_table, check_exact=True)


def test_killed_worker_loses_and_duplicates_nothing(cluster, local_table, tmp_path):
    client = distributed.Client(cluster)
    pids = list(client.run(os.getpid).values())
    killed: list[int] = []

    def kill_one_worker(cell):
        if not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    suite, cells = load_suite(write(tmp_path, SUITE))
    summary = run_suite(suite, cells, tmp_path / "out", progress=False, on_cell=kill_one_worker,
                        executor=DaskExecutor(cluster.scheduler_address))
    client.close()
    assert killed and not summary.failed and summary.ran == len(cells)
    files = sorted(p.name for p in (tmp_path / "out" / "cells").glob("*.parquet"))
    assert files == sorted(f"{c.cell_id}.parquet" for c in cells)
    table = summary.table.drop(columns=PROVENANCE)
    assert not table.duplicated(["cell_id", "protocol", "param_group", "metric"]).any()
    pd.testing.assert_frame_equal(table, local_table, check_exact=True)


def test_resume_with_the_other_executor(cluster, local_table, tmp_path):
    suite, cells = load_suite(write(tmp_path, SUITE))
    run_suite(suite, cells[:3], tmp_path / "out", progress=False, executor=LocalExecutor())
    summary = run_suite(suite, cells, tmp_path / "out", progress=False, executor=DaskExecutor(cluster.scheduler_address))
    assert (summary.skipped, summary.ran) == (3, len(cells) - 3)
    pd.testing.assert_frame_equal(summary.table.drop(columns=PROVENANCE), local_table, check_exact=True)


def test_timed_cells_run_alone_after_the_others(cluster, tmp_path):
    if "wallclock" not in __import__("gradbench.registry", fromlist=["PROTOCOLS"]).PROTOCOLS:
        pytest.skip("no wallclock protocol registered")
    text = SUITE.replace("protocols: [bias, variance]", "protocols: [variance]")
    timed = text.replace("  - name: oracle\n    params: {S: [1, 2]}\n", "").replace("name: slow", "name: timed")
    _, plain_cells = load_suite(write(tmp_path, text))
    _, timed_cells = load_suite(write(tmp_path, timed.replace("protocols: [variance]", "protocols: [wallclock]"), "t.yaml"))
    cells = [c for pair in zip(timed_cells, plain_cells) for c in pair]
    order = [o.cell for o in DaskExecutor(cluster.scheduler_address).run(cells, threading.Event())]
    n_timed = sum(map(is_timed, cells))
    assert n_timed and all(is_timed(c) for c in order[-n_timed:]) and not any(is_timed(c) for c in order[:-n_timed])


def test_compute_cell_reports_failures_as_outcomes(tmp_path):
    import dataclasses

    _, cells = load_suite(write(tmp_path, SUITE))
    broken = dataclasses.replace(cells[0], estimator_params={"S": 1, "bogus": 3})
    outcome = compute_cell(broken)
    assert outcome.rows is None and outcome.error.startswith("TypeError")


def test_cells_compute_single_threaded_and_restore_threads(tmp_path, monkeypatch):
    import torch

    from gradbench.run.compute import cell_thread_limits

    seen = []
    before = torch.get_num_threads()
    with cell_thread_limits(1):
        seen.append(torch.get_num_threads())
    assert seen == [1] and torch.get_num_threads() == before
    monkeypatch.setenv("GRADBENCH_CELL_THREADS", "2")
    from gradbench.run.compute import cell_threads

    assert cell_threads() == 2
