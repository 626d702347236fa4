"""Step 3: influence matrix (checkpoint-weighted cosine) into a DuckDB store."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import task

from bidsml.config import Recipe
from bidsml.influence import influence_matrix
from storage.checkpoints import load_checkpoints
from storage.datasets import load_split
from storage.gradients import iter_feature_chunks, load_examples_meta, read_features
from storage.influence_store import save_influence
from storage.refs import ArtifactRef, Plan, materialize
from tasks.common import ArtifactCachePolicy, code_version, publish, ref_inputs, run_root

CODE = code_version(__name__)


def plan_influence(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, feats: ArtifactRef) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="influence",
        inputs={**ref_inputs(data=data, warmup=warm, features=feats), "code": CODE},
    )


@task(cache_policy=ArtifactCachePolicy(plan=plan_influence), persist_result=True)
def compute_influence(
    recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, feats: ArtifactRef, refresh: bool = False
) -> ArtifactRef:
    """Streams the checkpoint-weighted cosine A (pool x validation) into an immutable DuckDB file."""
    started = time.time()

    def build(work: Path) -> dict:
        ckpts = load_checkpoints(warm)
        weights = [c["weight"] for c in ckpts]
        val_feats = [read_features(feats.path, "val", c) for c in range(len(ckpts))]
        meta = load_examples_meta(feats.path)
        pool = load_split(data, "train")
        val = load_split(data, "val")
        A = influence_matrix(lambda c: iter_feature_chunks(feats.path, "train", c), val_feats, weights, len(pool))
        train_df = pd.DataFrame(
            {
                "idx": range(len(pool)),
                "id": [e.id for e in pool],
                "source": [e.source for e in pool],
                "n_tokens": meta["train"]["n_tokens"],
            }
        )
        val_df = pd.DataFrame(
            {
                "idx": range(len(val)),
                "id": [e.id for e in val],
                "task": [e.task for e in val],
                "subtask": [e.subtask for e in val],
                "capability": [e.capability for e in val],
            }
        )
        ck_df = pd.DataFrame(
            [{"c": i, "step": c["step"], "mean_lr": c["mean_lr"], "weight": c["weight"]} for i, c in enumerate(ckpts)]
        )
        save_influence(work, A, train_df, val_df, ck_df)
        return {"n_train": A.shape[0], "n_val": A.shape[1], "mean": float(A.mean()), "std": float(A.std())}

    ref = materialize(plan_influence(recipe, data, warm, feats), build, force=refresh)
    return publish(ref, "compute_influence", {}, [data, warm, feats], started)
