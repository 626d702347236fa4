"""Step `influence`: the checkpoint-weighted cosine (pool x validation), streamed in row blocks into DuckDB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bidsml.influence.scores import influence_block
from tasks.step import Build, Input, Step
from storage.checkpoints import load_checkpoints
from storage.datasets import load_split
from storage.gradients import load_examples_meta, read_feature_rows, read_features
from storage.influence_store import (
    BLOCK_ROWS,
    StoredMatrix,
    open_influence,
    save_influence_tables,
    write_influence_blocks,
)
from storage.refs import current_digest
from storage.row_reuse import load_row_sources, published


def earlier_influence(feats, warm) -> tuple[Path, str] | None:
    """Returns (folder, identity) of a published influence artifact whose rows this one can copy: built on the
    features artifact whose validation features ours are, bit for bit (`val_from`), with the same warmup."""
    source = feats.meta.get("val_from")
    if not source:
        return None
    run_root = Path(feats.path).parents[2]
    digest = {m["identity"]: current_digest(p) for p, m in published(run_root, "features")}.get(source)
    for path, meta in published(run_root, "influence"):
        inputs = meta["inputs"]["inputs"]
        if digest is not None and inputs.get("features") == digest and inputs.get("warmup") == warm.digest:
            return path, meta["identity"]
    return None


def reuse(recipe, inputs, params) -> dict:
    """Returns the earlier influence artifact this one copies rows from, when there is one (its identity)."""
    src = earlier_influence(inputs["features"], inputs["warmup"])
    return {"reuse": src[1]} if src else {}


def copied_rows(feats, source_features: str, n: int) -> np.ndarray:
    """Returns (n,): per pool row, the row of `source_features` our features copied it from, else -1."""
    out = np.full(n, -1, dtype=np.int64)
    rs = load_row_sources(feats.path)
    if source_features in rs.identities and "train" in rs.rows:
        k = rs.identities.index(source_features)
        mine = rs.source["train"] == k
        out[rs.rows["train"][mine]] = rs.source_rows["train"][mine]
    return out


def build(b: Build) -> dict:
    """Streams the checkpoint-weighted cosine A (pool x validation) into the store, block by block (resumable);
    the rows of an earlier artifact with these validation features are copied from it."""
    data, warm, feats = b.inputs["data"], b.inputs["warmup"], b.inputs["features"]
    ckpts = load_checkpoints(warm)
    weights = [c["weight"] for c in ckpts]
    val_feats = [read_features(feats.path, "val", c) for c in range(len(ckpts))]
    meta = load_examples_meta(feats.path)
    pool = load_split(data, "train")
    val = load_split(data, "val")
    n, m = len(pool), len(val)

    earlier = earlier_influence(feats, warm)
    take = copied_rows(feats, feats.meta["val_from"], n) if earlier else np.full(n, -1, dtype=np.int64)
    before = StoredMatrix(earlier[0]) if earlier else None

    def compute(start: int, stop: int):
        blocks = [read_feature_rows(feats.path, "train", c, start, stop) for c in range(len(ckpts))]
        src = take[start:stop]
        if not (src >= 0).any():
            return influence_block(blocks, val_feats, weights)
        out = np.empty((stop - start, m), dtype=np.float32)
        mine, new = np.flatnonzero(src >= 0), np.flatnonzero(src < 0)
        out[mine] = before.rows(src[mine])
        if len(new):
            out[new] = influence_block([blk[new] for blk in blocks], val_feats, weights)
        return out

    progress = b.progress("row blocks", total=-(-n // BLOCK_ROWS))
    write_influence_blocks(b.work, n, m, compute, BLOCK_ROWS, lambda i, total, skipped: progress.update(i + 1, total))
    train_df = pd.DataFrame(
        {
            "idx": range(n),
            "id": [e.id for e in pool],
            "source": [e.source for e in pool],
            "n_tokens": meta["train"]["n_tokens"],
            "planted_for": [e.planted_for for e in pool],  # the evidence experiment's planted rows (else null)
        }
    )
    val_df = pd.DataFrame(
        {
            "idx": range(m),
            "id": [e.id for e in val],
            "task": [e.task for e in val],
            "subtask": [e.subtask for e in val],
            "capability": [e.capability for e in val],
        }
    )
    ck_df = pd.DataFrame(
        [{"c": i, "step": c["step"], "mean_lr": c["mean_lr"], "weight": c["weight"]} for i, c in enumerate(ckpts)]
    )
    save_influence_tables(b.work, train_df, val_df, ck_df)
    con = open_influence(b.work)
    try:
        mean, std = con.execute("SELECT avg(mean), sqrt(avg(std * std)) FROM column_stats").fetchone()
    finally:
        con.close()
    reused = int((take >= 0).sum())
    if earlier:
        b.log(f"influence rows copied from {earlier[1][:12]}: {reused} of {n}; computed: {n - reused}")
    return {
        "n_train": n,
        "n_val": m,
        "mean": float(mean),
        "column_std": float(std),
        "block_rows": BLOCK_ROWS,
        "rows_reused": reused,
        "rows_computed": n - reused,
        "reused_from": earlier[1] if earlier else None,
    }


STEP = Step(
    name="influence",
    doc="Computes the influence matrix (pool x validation) into the DuckDB store.",
    inputs=(Input("data"), Input("warmup"), Input("features")),
    identity=reuse,
    build=build,
)
