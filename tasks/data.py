"""Step 1a: assemble and validate the pool, validation examples and test items."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import task

import bidsml.data
import bidsml.prepare
import bidsml.sources
from bidsml.config import Recipe
from bidsml.data import write_jsonl
from bidsml.model import load_tokenizer, model_fingerprint
from storage.names import DATA_REPORT, POOL_FILE, VAL_FILE
from storage.refs import ArtifactRef, Plan, file_sha256, materialize
from tasks.common import ArtifactCachePolicy, code_version, publish, run_root

CODE = code_version(bidsml.data, bidsml.prepare, bidsml.sources)


def plan_data(recipe: Recipe) -> Plan:
    user_files = {s.path: file_sha256(Path(s.path)) for s in recipe.data.pool if s.path and Path(s.path).is_file()}
    return Plan(
        run_root=run_root(recipe),
        kind="data",
        inputs={
            "data": recipe.data.model_dump(mode="json"),
            "seed": recipe.seed,
            "tokenizer": model_fingerprint(recipe.model),
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
        pool, pool_counts = bidsml.prepare.load_pool(recipe.data, recipe.seed)
        fits = bidsml.prepare.fits_in(tok, recipe.model.max_seq_length)
        val, target_counts = bidsml.prepare.load_targets(recipe.data, recipe.seed, fits)
        kept, rejected, truncated = bidsml.prepare.drop_untrainable(tok, pool, recipe.model)
        write_jsonl(kept, work / POOL_FILE)
        write_jsonl(val, work / VAL_FILE)
        report = {
            "pool_in": len(pool),
            "pool_out": len(kept),
            "pool_rejected": rejected,
            "pool_truncated": truncated,
            "sources": pool_counts,
            "targets": target_counts,
            "n_val": len(val),
        }
        (work / DATA_REPORT).write_text(json.dumps(report, indent=1))
        return {k: v for k, v in report.items() if k != "pool_rejected"} | {"n_rejected": len(rejected)}

    ref = materialize(plan_data(recipe), build, force=refresh)
    return publish(ref, "prepare_data", {"seed": recipe.seed}, [], started)


def load_split(ref: ArtifactRef, name: str) -> list[bidsml.data.Example]:
    """Returns the examples of one split file (pool / validation) of a data artifact."""
    exs, _ = bidsml.data.read_jsonl(ref.path / name)
    return exs
