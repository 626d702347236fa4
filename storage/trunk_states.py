"""Shared-trunk states of an evaluation's scored items, saved once and reused by every model that shares them.

The states entering the first LoRA-adapted decoder layer are the same for
the base model and each fine-tune (`bidsml.evaluation.trunk.TrunkStates`). They are a
derived, content-addressed speed cache, not an artifact: the file name is the
digest of everything that determines them (model files, items, layer, batch
layout, dtype, device, threads, library versions, the scoring code), scores
never depend on whether they were reused (the top layers always run from
them), and each use checks the first batch against a full pass. Deleting
`<run_root>/trunk/` only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bidsml.evaluation.trunk import TrunkStates
from storage.speed_caches import cache_file

FORMAT = 1


def trunk_path(run_root: str | Path, key: dict) -> Path:
    """Returns the file that holds the trunk states identified by `key` (a JSON-able dict)."""
    return cache_file(run_root, "trunk", {"format": FORMAT, **key}, ".safetensors")


def items_digest(pairs: list[tuple[str, str]]) -> str:
    """Returns the digest of the scored (prompt, continuation) texts, in order."""
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def load_trunk(path: Path, layer: int) -> TrunkStates | None:
    """Returns the saved trunk states, or None when there are none (or the file is unreadable)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None  # a torn or foreign file: recompute (and overwrite) it
    trunk = TrunkStates(layer=layer)
    for name, t in tensors.items():
        kind, _, index = name.partition(".")
        (trunk.prefixes if kind == "prefix" else trunk.items)[int(index)] = t
    return trunk


def save_trunk(path: Path, trunk: TrunkStates) -> None:
    """Writes the trunk states atomically (a reader sees the old file or the whole new one)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"prefix.{g}": t.contiguous() for g, t in trunk.prefixes.items()}
    tensors.update({f"item.{i}": t.contiguous() for i, t in trunk.items.items()})
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"layer": str(trunk.layer), "format": str(FORMAT)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # readable like the run root's other files (workers on a shared root)
    os.replace(tmp, path)


def trunk_bytes(trunk: TrunkStates) -> int:
    """Returns the size of the states in memory."""
    return sum(t.numel() * t.element_size() for t in [*trunk.prefixes.values(), *trunk.items.values()])
