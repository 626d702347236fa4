"""Step 3: influence matrix (checkpoint-weighted cosine), streamed in row blocks into the influence store."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import task
from tqdm.auto import tqdm

from bidsml.config import Recipe
from bidsml.influence import influence_block
from storage.checkpoints import load_checkpoints
from storage.datasets import load_split
from storage.gradients import load_examples_meta, read_feature_rows, read_features
from storage.influence_store import BLOCK_ROWS, open_influence, save_influence_tables, write_influence_blocks
from storage.refs import ArtifactRef, Plan, materialize
from tasks.common import (
    ArtifactCachePolicy,
    Progress,
    artifact_key,
    code_version,
    publish,
    ref_inputs,
    run_root,
    run_tag,
)

CODE = code_version(__name__)


def plan_influence(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, feats: ArtifactRef) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="influence",
        inputs={**ref_inputs(data=data, warmup=warm, features=feats), "block_rows": BLOCK_ROWS, "code": CODE},
    )


@task(cache_policy=ArtifactCachePolicy(plan=plan_influence), persist_result=True)
def compute_influence(
    recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, feats: ArtifactRef, refresh: bool = False
) -> ArtifactRef:
    """Streams the checkpoint-weighted cosine A (pool x validation) into the store, block by block (resumable)."""
    started = time.time()

    def build(work: Path) -> dict:
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

        progress = Progress(artifact_key("influence-progress", run_tag(recipe)), "influence row blocks")
        bar = tqdm(total=-(-n // BLOCK_ROWS), desc="influence blocks")

        def on_block(i, total, skipped):
            bar.update(1)
            progress.update(i + 1, total)

        write_influence_blocks(work, n, m, compute, BLOCK_ROWS, on_block)
        bar.close()
        train_df = pd.DataFrame(
            {
                "idx": range(n),
                "id": [e.id for e in pool],
                "source": [e.source for e in pool],
                "n_tokens": meta["train"]["n_tokens"],
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
        save_influence_tables(work, train_df, val_df, ck_df)
        con = open_influence(work)
        try:
            mean, std = con.execute("SELECT avg(mean), sqrt(avg(std * std)) FROM column_stats").fetchone()
        finally:
            con.close()
        return {"n_train": n, "n_val": m, "mean": float(mean), "column_std": float(std)}

    ref = materialize(plan_influence(recipe, data, warm, feats), build, force=refresh)
    return publish(ref, "compute_influence", {}, [data, warm, feats], started, tag=run_tag(recipe))
