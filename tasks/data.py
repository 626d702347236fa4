"""Step `data`: assemble and validate the pool, validation examples and test items."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import bidsml.data.prepare
from bidsml.config import EvalConfig
from bidsml.model import load_tokenizer
from bidsml.data.sources import SOURCES
from tasks.step import Build, Step
from storage.datasets import save_data
from storage.refs import file_sha256


def plants(recipe) -> bool:
    """Whether the pool has a planted source (its rows depend on what the evaluation scores)."""
    return any(SOURCES[s.source].plants for s in recipe.data.pool)


def user_files(recipe, inputs, params) -> dict:
    """Returns {path: sha256} of the user's pool and target files: their content is part of the data's identity;
    with a planted source, also the evaluation's settings (which items are scored decides what is planted)."""
    files = bidsml.data.prepare.user_files(recipe.data)
    out = {"user_files": {p: file_sha256(Path(p)) for p in files if Path(p).is_file()}}
    if plants(recipe):
        out["scored_items"] = recipe.evaluation.model_dump(mode="json", include={"benchmarks"})
    return out


def build(b: Build) -> dict:
    """Loads pool and targets, rejects malformed/untrainable records; returns the data report."""
    recipe = b.recipe
    tok = load_tokenizer(recipe.model)
    fits = bidsml.data.prepare.fits_in(tok, recipe.model.max_seq_length)
    val_seed = recipe.data.val_seed if recipe.data.val_seed is not None else recipe.sampling_seed
    val, target_counts = bidsml.data.prepare.load_targets(recipe.data, val_seed, fits)
    drop = None
    if plants(recipe):  # planted rows never share a 13-gram with a scored item or a validation example
        from bidsml.evaluation.benchmarks.contamination import overlap_filter
        from bidsml.evaluation.items import evaluation_items

        drop = overlap_filter(evaluation_items(recipe), val)
    pool, pool_counts = bidsml.data.prepare.load_pool(recipe.data, recipe.sampling_seed, drop)
    kept, rejected, truncated = bidsml.data.prepare.drop_untrainable(tok, pool, recipe.model)
    report = {
        "pool_in": len(pool),
        "pool_out": len(kept),
        "pool_rejected": rejected,
        "pool_truncated": truncated,
        "sources": pool_counts,
        "targets": target_counts,
        "n_val": len(val),
    }
    planted = pd.Series([e.planted_for for e in kept if e.planted_for]).value_counts().sort_index().to_dict()
    if planted:
        report["planted_for"] = {k: int(v) for k, v in planted.items()}
    save_data(b.work, kept, val, report)
    return {k: v for k, v in report.items() if k != "pool_rejected"} | {"n_rejected": len(rejected)}


def report(ref) -> dict:
    """Returns what the run report shows of the data: the pool's counts (kept, read, rejected, truncated) and the
    validation examples'."""
    return {"pool": {k: ref.meta.get(k) for k in ("pool_out", "pool_in", "n_rejected", "pool_truncated", "n_val")}}


STEP = Step(
    name="data",
    doc="Loads the pool and validation sets, rejecting malformed and untrainable records.",
    # evaluation: read only with a planted source (which items are scored), and then in the identity
    sections=("data", "sampling_seed", "model", "evaluation"),
    ignore={"evaluation": tuple(EvalConfig.model_fields)},
    identity=user_files,
    report=report,
    build=build,
)
