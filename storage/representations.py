"""The representations artifact: pooled hidden states of pool and validation examples (.npy per pooling)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from storage.refs import ArtifactRef
from storage.speed_caches import cache_file


def representations_path(root: Path, split: str, pooling: str) -> Path:
    return Path(root) / f"{split}_{pooling}.npy"


def save_representations(work: Path, split: str, pooled: dict[str, np.ndarray]) -> None:
    for pooling, arr in pooled.items():
        np.save(representations_path(work, split, pooling), np.ascontiguousarray(arr, dtype=np.float32))


def load_representations(ref: ArtifactRef) -> dict[str, np.ndarray]:
    """Returns {"<split>_<pooling>": (N|M, H) array} for every stored split and pooling."""
    return {p.stem: np.load(p) for p in sorted(ref.path.glob("*.npy"))}


def representations_exist(root: Path) -> bool:
    return any(Path(root).glob("*.npy"))


# --- the per-split cache: a split's representations by its content -------------------------------------------
# A data artifact holds the pool and one validation draw; independent seeds draw different validation sets from the
# same pool, so the pool's representations (nearly all the work) are the same for every seed. Like the trunk
# caches, a derived, content-named speed cache under the run root, not an artifact: its name is the digest of what
# determines the arrays (model files, the split file's content, the encoder, the code, threads and library
# versions). Deleting `<run_root>/cache/representations/` only costs time.


def split_cache_path(run_root: str | Path, key: dict) -> Path:
    """Returns the cache file of one split's representations named by the digest of `key`."""
    return cache_file(run_root, "cache/representations", key, ".npz")


def load_split_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Returns {pooling: array} saved at `path`, or None when absent."""
    if not path.exists():
        return None
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def save_split_cache(path: Path, pooled: dict[str, np.ndarray]) -> None:
    """Writes one split's {pooling: array}; atomically (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in pooled.items()})
    os.replace(tmp, path)
