"""Step 1a: assemble and validate the pool, validation examples and test items."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task

import bidsml.prepare
from bidsml.config import Recipe
from bidsml.model import load_tokenizer
from storage.datasets import save_data
from storage.refs import ArtifactRef, Plan, file_sha256, materialize
from tasks.common import (
    ArtifactCachePolicy,
    code_version,
    model_identity,
    publish,
    run_root,
    run_tag,
)

CODE = code_version(__name__)


def plan_data(recipe: Recipe) -> Plan:
    user_files = {p: file_sha256(Path(p)) for p in bidsml.prepare.user_files(recipe.data) if Path(p).is_file()}
    return Plan(
        run_root=run_root(recipe),
        kind="data",
        inputs={
            "data": recipe.data.model_dump(mode="json"),
            "seed": recipe.sampling_seed,
            "tokenizer": model_identity(recipe),
            "max_seq_length": recipe.model.max_seq_length,
            "user_files": user_files,
            "code": CODE,
        },
    )


@task(cache_policy=ArtifactCachePolicy(plan=plan_data), persist_result=True)
def prepare_data(recipe: Recipe, refresh: bool = False) -> ArtifactRef:
    """Loads pool and targets, rejects malformed/untrainable records; returns the data artifact."""
    started = time.time()

    def build(work: Path) -> dict:
        tok = load_tokenizer(recipe.model)
        pool, pool_counts = bidsml.prepare.load_pool(recipe.data, recipe.sampling_seed)
        fits = bidsml.prepare.fits_in(tok, recipe.model.max_seq_length)
        val, target_counts = bidsml.prepare.load_targets(recipe.data, recipe.sampling_seed, fits)
        kept, rejected, truncated = bidsml.prepare.drop_untrainable(tok, pool, recipe.model)
        report = {
            "pool_in": len(pool),
            "pool_out": len(kept),
            "pool_rejected": rejected,
            "pool_truncated": truncated,
            "sources": pool_counts,
            "targets": target_counts,
            "n_val": len(val),
        }
        save_data(work, kept, val, report)
        return {k: v for k, v in report.items() if k != "pool_rejected"} | {"n_rejected": len(rejected)}

    ref = materialize(plan_data(recipe), build, force=refresh)
    return publish(ref, "prepare_data", {"seed": recipe.sampling_seed}, [], started, tag=run_tag(recipe))
