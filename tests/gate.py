"""A test plugin that holds a child ``gradbench run`` at a known point, so that kill/interrupt tests synchronise
on events instead of sleeping.

Loaded through a suite's ``plugins: [tests.gate]``. It registers ``gated_iwae`` (the IWAE estimator, same schema,
same draws) and wraps ``loop.write_checkpoint``. Both do nothing unless ``GRADBENCH_TEST_GATE_DIR`` is set; then,
at the point named by ``GRADBENCH_TEST_GATE_AT``:

* ``cell:N`` — the first estimator call of the N-th distinct ``gated_iwae`` cell (told apart by ``K``) of this
  process: cells 1..N−1 have finished, cell N has started;
* ``checkpoint:N`` — right after this process wrote its N-th training checkpoint (atomically, so it is complete);

the process writes ``<dir>/held`` and waits until ``<dir>/release`` exists (at most HOLD_S seconds, then it raises,
so a test that forgets to release fails instead of hanging). A test waits for ``held`` (:func:`tests.sync.wait_for`),
then kills, interrupts or releases the child.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from gradbench import registry
from gradbench.training import loop

HOLD_S = 300.0
_seen_K: list[int] = []
_checkpoints = 0


def _at(kind: str) -> int | None:
    """N when this process should hold at the N-th ``kind`` event, else None."""
    spec = os.environ.get("GRADBENCH_TEST_GATE_AT", "")
    if not os.environ.get("GRADBENCH_TEST_GATE_DIR") or not spec.startswith(kind + ":"):
        return None
    return int(spec.split(":", 1)[1])


def _hold() -> None:
    gate = Path(os.environ["GRADBENCH_TEST_GATE_DIR"])
    (gate / "held").write_text(str(os.getpid()))
    deadline = time.monotonic() + HOLD_S
    while not (gate / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("tests.gate: never released")
        time.sleep(0.01)


def gated_iwae(target, R, gen, *, K: int = 8):
    """importance.iwae, holding first (see the module docstring)."""
    from gradbench.estimators.importance import iwae

    if K not in _seen_K:
        _seen_K.append(K)
        if _at("cell") == len(_seen_K):
            _hold()
    return iwae(target, R, gen, K=K)


_write_checkpoint = loop.write_checkpoint


def _gated_write_checkpoint(*args, **kwargs) -> None:
    global _checkpoints
    _write_checkpoint(*args, **kwargs)
    _checkpoints += 1
    if _at("checkpoint") == _checkpoints:
        _hold()


loop.write_checkpoint = _gated_write_checkpoint
registry.register(dataclasses.replace(registry.ESTIMATORS["iwae"], name="gated_iwae", fn=gated_iwae))

