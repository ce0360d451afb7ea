"""Deterministic seeds derived from content, never from an estimator's name.

A target's parameters and data come from ``target_seed`` (default: the suite seed); a cell's noise
comes from ``derive_seed(suite_seed, target_id, block)``: every estimator run on the same target
sees the same generator streams (common random numbers), replicate block b is the same whatever
the total number of replicates, and a new suite seed with a fixed target_seed re-runs the same
targets with fresh noise (what `gradbench compare` needs to replicate a run).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-serialisable parts."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    import torch  # here, not at import: `gradbench validate` hashes seeds without torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
