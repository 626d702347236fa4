"""The training trunk's file: the states entering the first LoRA-adapted layer of every pool example, saved once.

Like the evaluation's trunk states (storage/trunk_states.py), a derived,
content-named speed cache beside the artifacts, not an artifact: the file name
is the digest of everything that determines the states (model files, layer,
the examples' tokens, dtype, device, library versions, the code), and each
training run checks its first batch against a full pass. A cache larger than
`MEMORY_BUDGET_BYTES` is written and read memory-mapped, never held whole.
Deleting `<run_root>/trunk/` only costs time. Computing the states is
tasks/adapters.py's (storage stores; it loads no model).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bidsml.training.trunk import TrainTrunk
from storage.speed_caches import cache_file

MEMORY_BUDGET_BYTES = 2 * 2**30  # larger trunks are memory-mapped


def train_trunk_path(run_root: str | Path, key: dict) -> Path:
    """Returns the trunk file named by the digest of `key` (what determines the states)."""
    return cache_file(run_root, "trunk", key, ".npy", prefix="train-")


def save_train_trunk(path: Path, states: np.ndarray, offsets: np.ndarray) -> None:
    """Writes a trunk's states and row offsets; the states file lands last, atomically (it marks the trunk whole).
    Memory-mapped states (a np.memmap built in the same folder) are moved, not copied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    if isinstance(states, np.memmap):
        states.flush()
        os.replace(states.filename, tmp)
    else:
        np.save(tmp, states)
    np.save(path.with_suffix(".offsets.npy"), offsets)
    os.replace(tmp, path)


def load_train_trunk(path: Path, layer: int) -> TrainTrunk | None:
    """Returns the saved trunk at `path` (memory-mapped when larger than the memory budget), or None when absent."""
    offsets = path.with_suffix(".offsets.npy")
    if not (path.exists() and offsets.exists()):
        return None
    mmap = "r" if path.stat().st_size > MEMORY_BUDGET_BYTES else None
    return TrainTrunk(layer, np.load(path, mmap_mode=mmap), np.load(offsets))
