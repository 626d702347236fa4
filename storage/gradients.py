"""Zarr gradient store: one group per (checkpoint, split), written chunk by chunk.

Layout: ``features.zarr/<split>/ckpt_<c>/{features [N, k] float16, norms [N] float32}``
with row chunks of `chunk_rows`. Each chunk is written whole by one worker,
then a marker file ``chunks_done/<split>-<c>-<chunk>`` records it, so a
killed run resumes at the first unfinished chunk. Features are L2-normalised
before the fp16 cast (raw gradients overflow fp16); norms stay fp32.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zarr

from storage.names import (
    CHUNK_BUILDERS_DIR,
    CHUNKS_DONE_DIR,
    EXAMPLES_META,
    FEATURES_ARRAY,
    FEATURES_STORE,
    NORMS_ARRAY,
)


def group_path(split: str, ckpt: int) -> str:
    return f"{split}/ckpt_{ckpt}"


def gradient_store_path(root: Path) -> Path:
    return Path(root) / FEATURES_STORE


def _marker(root: Path, split: str, ckpt: int, chunk: int) -> Path:
    return Path(root) / CHUNKS_DONE_DIR / f"{split}-{ckpt}-{chunk:06d}"


def _builder(root: Path, split: str, chunk: int) -> Path:
    path = Path(root) / CHUNK_BUILDERS_DIR / f"{split}-{chunk:06d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def chunk_builders(root: Path) -> list[dict]:
    """Returns who computed each (split, chunk) of a store being built: [{host, pid, worker}, ...]."""
    folder = Path(root) / CHUNK_BUILDERS_DIR
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def create_groups(root: Path, split: str, ckpt: int, n: int, k: int, chunk_rows: int) -> None:
    """Pre-sizes the arrays of one (split, checkpoint) group; keeps them if they exist (resume)."""
    store = zarr.open_group(str(gradient_store_path(root)), mode="a")
    path = group_path(split, ckpt)
    if path in store:
        return
    g = store.require_group(path)
    g.create_array(
        FEATURES_ARRAY, shape=(n, k), chunks=(chunk_rows, k), dtype="float16", compressors=None, fill_value=0
    )
    g.create_array(NORMS_ARRAY, shape=(n,), chunks=(chunk_rows,), dtype="float32", compressors=None, fill_value=0)
    (Path(root) / CHUNKS_DONE_DIR).mkdir(parents=True, exist_ok=True)


def write_chunks(
    root: Path,
    split: str,
    ckpt: int,
    n: int,
    k: int,
    chunk_rows: int,
    compute: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    on_chunk: Callable[[int, int, bool], None] | None = None,
) -> int:
    """Fills one (split, checkpoint) group chunk by chunk, skipping finished chunks; returns how many were computed.

    `compute(start, stop)` returns (normalised features (n, k), norms (n,)) for rows start..stop.
    """
    return write_chunks_checkpoints(
        root, split, [ckpt], n, k, chunk_rows, lambda a, b, todo: {ckpt: compute(a, b)}, on_chunk
    )


def write_chunks_checkpoints(
    root: Path,
    split: str,
    ckpts: list[int],
    n: int,
    k: int,
    chunk_rows: int,
    compute: Callable[[int, int, list[int]], dict[int, tuple[np.ndarray, np.ndarray]]],
    on_chunk: Callable[[int, int, bool], None] | None = None,
    chunks: range | None = None,
    by: dict | None = None,
) -> int:
    """Fills the groups of several checkpoints of a split, chunk by chunk in one pass; returns chunks computed.

    `compute(start, stop, todo)` returns {ckpt: (features, norms)} for rows
    start..stop of the checkpoints in `todo` (those whose chunk is unfinished),
    so a run killed between two checkpoints' writes redoes only the missing one.
    `chunks` limits the work to a range of chunk indices (a shard: workers
    fill disjoint ranges of the same pre-sized arrays). `by` (who computes:
    host, pid, worker) is recorded per chunk beside the markers, outside the
    store's content (`chunk_builders`).
    """
    for c in ckpts:
        create_groups(root, split, c, n, k, chunk_rows)
    store = zarr.open_group(str(gradient_store_path(root)), mode="r+")
    groups = {c: store[group_path(split, c)] for c in ckpts}
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    computed = 0
    for i in chunks if chunks is not None else range(n_chunks):
        start, stop = i * chunk_rows, min(n, (i + 1) * chunk_rows)
        todo = [c for c in ckpts if not _marker(root, split, c, i).exists()]
        if todo:
            out = compute(start, stop, todo)
            if by is not None:  # before the markers: a finished chunk always has its record
                _builder(root, split, i).write_text(json.dumps(by, sort_keys=True))
            for c in todo:
                feats, norms = out[c]
                groups[c][FEATURES_ARRAY][start:stop] = feats.astype(np.float16)
                groups[c][NORMS_ARRAY][start:stop] = norms.astype(np.float32)
                _marker(root, split, c, i).touch()
                computed += 1
        if on_chunk:
            on_chunk(i, n_chunks, not todo)
    return computed


def read_features(root: Path, split: str, ckpt: int) -> np.ndarray:
    """Returns a whole (split, checkpoint) feature array (small splits, e.g. validation)."""
    g = zarr.open_group(str(gradient_store_path(root)), mode="r")[group_path(split, ckpt)]
    return g[FEATURES_ARRAY][:]


def iter_feature_chunks(root: Path, split: str, ckpt: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (row offset, features chunk) of a (split, checkpoint) group, one Zarr chunk at a time."""
    arr = zarr.open_group(str(gradient_store_path(root)), mode="r")[group_path(split, ckpt)][FEATURES_ARRAY]
    step = arr.chunks[0]
    for start in range(0, arr.shape[0], step):
        yield start, arr[start : start + step]


def read_norms(root: Path, split: str, ckpt: int) -> np.ndarray:
    g = zarr.open_group(str(gradient_store_path(root)), mode="r")[group_path(split, ckpt)]
    return g[NORMS_ARRAY][:]


def save_examples_meta(work: Path, meta: dict) -> None:
    """Writes {split: {"ids": [...], "n_tokens": [...]}} beside the gradient store."""
    (Path(work) / EXAMPLES_META).write_text(json.dumps(meta, sort_keys=True))


def load_examples_meta(root: Path) -> dict:
    return json.loads((Path(root) / EXAMPLES_META).read_text())


def read_feature_rows(root: Path, split: str, ckpt: int, start: int, stop: int) -> np.ndarray:
    """Returns rows start..stop of a (split, checkpoint) feature array (fp16, as stored)."""
    g = zarr.open_group(str(gradient_store_path(root)), mode="r")[group_path(split, ckpt)]
    return g[FEATURES_ARRAY][start:stop]


def read_feature_rows_at(root: Path, split: str, ckpt: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (features (fp16, as stored), norms) of the given rows of a (split, checkpoint) group."""
    g = zarr.open_group(str(gradient_store_path(root)), mode="r")[group_path(split, ckpt)]
    return g[FEATURES_ARRAY].get_orthogonal_selection((rows, slice(None))), g[NORMS_ARRAY].get_orthogonal_selection(
        rows
    )
