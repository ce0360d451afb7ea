"""A recorder for blockwise references: wraps ``streaming_reference`` in a module so that a test sees each block's
size and draws (tests/references/test_estimated.py, test_enumeration.py)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch


def record_blocks(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> tuple[list[int], list[torch.Tensor]]:
    """Replace ``module.streaming_reference`` by one that records every block's size R and its draws [R, P]."""
    sizes: list[int] = []
    drawn: list[torch.Tensor] = []
    inner = module.streaming_reference

    def recording(draw, total, block, **kw):
        def record(R: int) -> torch.Tensor:
            sizes.append(R)
            drawn.append(draw(R).detach().double())
            return drawn[-1]
        return inner(record, total, block, **kw)

    monkeypatch.setattr(module, "streaming_reference", recording)
    return sizes, drawn
