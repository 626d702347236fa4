"""The representations artifact: pooled hidden states of pool and validation examples (.npy per pooling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.refs import ArtifactRef


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
