"""Content-named speed caches under the run root: the evaluation's and the training's trunk states, the
representations of a split. Not artifacts: a file's name is the digest of everything that determines what it holds,
so a cached file and a recomputed one are the same bytes, and deleting one only costs time."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def cache_file(run_root: str | Path, folder: str, key: dict, suffix: str, prefix: str = "") -> Path:
    """Returns `<run_root>/<folder>/<prefix><digest of key><suffix>`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(run_root) / folder / f"{prefix}{digest[:24]}{suffix}"


def library_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def machine_key() -> dict:
    """Returns what of this process changes a computation's last bits: torch's thread count (a matmul's reduction
    order) and the library versions."""
    import torch

    return {"threads": torch.get_num_threads(), "versions": library_versions()}
