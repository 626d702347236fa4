"""Step 2b (RDS baseline only): mean-pooled last hidden states of pool and validation examples."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prefect import task

import bidsml.represent
from bidsml.config import Recipe
from bidsml.data import tokenize_all
from bidsml.model import load_base_model, load_tokenizer
from bidsml.represent import mean_pooled_states
from storage.names import POOL_FILE, VAL_FILE
from storage.refs import ArtifactRef, Plan, materialize
from tasks.common import ArtifactCachePolicy, code_version, model_inputs, publish, ref_inputs, run_root
from tasks.data import load_split

CODE = code_version(bidsml.represent)
REPS = {"train": "train_reps.npy", "val": "val_reps.npy"}


def plan_represent(recipe: Recipe, data: ArtifactRef) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="representations",
        inputs={
            **ref_inputs(data=data),
            **model_inputs(recipe),
            "code": CODE,
        },
    )


@task(cache_policy=ArtifactCachePolicy(plan=plan_represent), persist_result=True)
def represent(recipe: Recipe, data: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Computes normalised mean-pooled hidden states of the base model (RDS); returns the artifact."""
    started = time.time()

    def build(work: Path) -> dict:
        tok = load_tokenizer(recipe.model)
        model = load_base_model(recipe.model)
        for split, fname in (("train", POOL_FILE), ("val", VAL_FILE)):
            items, _ = tokenize_all(tok, load_split(data, fname), recipe.model.max_seq_length)
            reps = mean_pooled_states(model, items, tok.pad_token_id, recipe.features.max_tokens)
            np.save(work / REPS[split], reps.numpy())
        return {"hidden_size": int(reps.shape[1])}

    ref = materialize(plan_represent(recipe, data), build, force=refresh)
    return publish(ref, "represent", {}, [data], started)


def rds_scores(ref: ArtifactRef) -> np.ndarray:
    """Returns the RDS similarity matrix (pool x validation): cosine of representations."""
    return np.load(ref.path / REPS["train"]) @ np.load(ref.path / REPS["val"]).T
