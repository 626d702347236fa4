"""Step 2b (representation-based selectors only): pooled last hidden states of pool and validation examples."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from bidsml.config import Recipe
from bidsml.data import tokenize_all
from bidsml.model import load_base_model, load_tokenizer
from bidsml.represent import pooled_states
from storage.datasets import SPLIT_FILES, load_split
from storage.refs import ArtifactRef, Plan, materialize
from storage.representations import save_representations
from tasks.common import (
    ArtifactCachePolicy,
    code_version,
    model_inputs,
    publish,
    ref_inputs,
    run_root,
    run_tag,
)

CODE = code_version(__name__)


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
    """Computes normalised pooled hidden states of the base model (mean and position-weighted); returns the artifact."""
    started = time.time()

    def build(work: Path) -> dict:
        tok = load_tokenizer(recipe.model)
        model = load_base_model(recipe.model)
        for split in SPLIT_FILES:
            items, _ = tokenize_all(tok, load_split(data, split), recipe.model.max_seq_length)
            pooled = pooled_states(model, items, tok.pad_token_id, recipe.features.max_tokens)
            save_representations(work, split, {p: v.numpy() for p, v in pooled.items()})
        return {"hidden_size": int(next(iter(pooled.values())).shape[1]), "poolings": sorted(pooled)}

    ref = materialize(plan_represent(recipe, data), build, force=refresh)
    return publish(ref, "represent", {}, [data], started, tag=run_tag(recipe))
