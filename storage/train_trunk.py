"""The training trunk of a pool: the states entering the first LoRA-adapted layer of every pool example, saved once.

Like the evaluation's trunk states (storage/trunk_states.py), a derived,
content-named speed cache beside the artifacts, not an artifact: the file name
is the digest of everything that determines the states (model files, layer,
the examples' tokens, dtype, device, library versions, the code), and each
training run checks its first batch against a full pass. A cache larger than
`MEMORY_BUDGET_BYTES` is written and read memory-mapped, never held whole.
Deleting `<run_root>/trunk/` only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from bidsml.data import Tokenized
from bidsml.train_trunk import TrainTrunk, compute_trunk
from storage.trunk_states import library_versions

MEMORY_BUDGET_BYTES = 2 * 2**30  # larger trunks are memory-mapped


def train_trunk_path(run_root: str | Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(run_root) / "trunk" / f"train-{digest[:24]}.npy"


def pool_trunk(
    model_cfg,
    layers: tuple[int, ...] | None,
    items: list[Tokenized],
    run_root,
    pad_id: int,
    max_tokens: int,
    on_rows=None,
) -> TrainTrunk | None:
    """Returns the trunk of `items` (saved under run_root/trunk, computed on first use), or None without one.

    None when LoRA adapts every layer (no `lora.layers`, or layer 0).
    """
    import torch

    from bidsml.model import load_base_model
    from storage.identity import code_identity, model_identity

    if not layers or min(layers) == 0:
        return None
    layer = min(layers)
    model = None
    key = {
        "model": model_identity(model_cfg),
        "layer": layer,
        "items": hashlib.sha256(json.dumps([t.input_ids for t in items]).encode()).hexdigest(),
        "dtype": model_cfg.dtype,
        "device": model_cfg.device,
        "threads": torch.get_num_threads(),  # a matmul's last bits depend on it
        "versions": library_versions(),
        "code": code_identity("bidsml.train_trunk"),
    }
    path = train_trunk_path(run_root, key)
    offsets_path = path.with_suffix(".offsets.npy")
    if not (path.exists() and offsets_path.exists()):
        model = load_base_model(model_cfg).eval()
        if layer >= len(model.model.layers):
            return None
        with torch.no_grad():
            states, offsets = compute_trunk(model, layer, items, pad_id, max_tokens, on_rows, memmap_dir=path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        if isinstance(states, np.memmap):
            states.flush()
            os.replace(states.filename, tmp)
        else:
            np.save(tmp, states)
        np.save(offsets_path, offsets)
        os.replace(tmp, path)
        del model
    mmap = "r" if path.stat().st_size > MEMORY_BUDGET_BYTES else None
    return TrainTrunk(layer, np.load(path, mmap_mode=mmap), np.load(offsets_path))


def training_trunk(recipe, pool_items: list[Tokenized], run_root, progress=None) -> TrainTrunk | None:
    """Returns the training trunk of `pool_items` for the recipe's model and `lora.layers` (None: LoRA on every
    layer). `progress()` makes the progress bar, only when the states are computed."""
    from bidsml.model import load_tokenizer

    if not recipe.lora.layers or min(recipe.lora.layers) == 0:
        return None
    tok = load_tokenizer(recipe.model)
    bar = {}

    def on_rows(done: int, n: int) -> None:
        if progress is not None:
            bar.setdefault("bar", progress()).update(done, n)

    return pool_trunk(recipe.model, recipe.lora.layers, pool_items, run_root, tok.pad_token_id, 4096, on_rows)
