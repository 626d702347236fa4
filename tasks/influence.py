"""Step `influence`: the checkpoint-weighted cosine (pool x validation), streamed in row blocks into DuckDB."""

from __future__ import annotations

import pandas as pd

from bidsml.influence.scores import influence_block
from tasks.step import Build, Input, Step
from storage.checkpoints import load_checkpoints
from storage.datasets import load_split
from storage.gradients import load_examples_meta, read_feature_rows, read_features
from storage.influence_store import BLOCK_ROWS, open_influence, save_influence_tables, write_influence_blocks


def build(b: Build) -> dict:
    """Streams the checkpoint-weighted cosine A (pool x validation) into the store, block by block (resumable)."""
    data, warm, feats = b.inputs["data"], b.inputs["warmup"], b.inputs["features"]
    ckpts = load_checkpoints(warm)
    weights = [c["weight"] for c in ckpts]
    val_feats = [read_features(feats.path, "val", c) for c in range(len(ckpts))]
    meta = load_examples_meta(feats.path)
    pool = load_split(data, "train")
    val = load_split(data, "val")
    n, m = len(pool), len(val)

    def compute(start: int, stop: int):
        blocks = [read_feature_rows(feats.path, "train", c, start, stop) for c in range(len(ckpts))]
        return influence_block(blocks, val_feats, weights)

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
    return {"n_train": n, "n_val": m, "mean": float(mean), "column_std": float(std), "block_rows": BLOCK_ROWS}


STEP = Step(
    name="influence",
    doc="Computes the influence matrix (pool x validation) into the DuckDB store.",
    inputs=(Input("data"), Input("warmup"), Input("features")),
    build=build,
)
