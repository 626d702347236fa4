"""Step `data`: assemble and validate the pool, validation examples and test items."""

from __future__ import annotations

from pathlib import Path

import bidsml.prepare
from bidsml.model import load_tokenizer
from steps.step import Build, Step
from storage.datasets import save_data
from storage.refs import file_sha256


def user_files(recipe, inputs, params) -> dict:
    """Returns {path: sha256} of the user's pool and target files: their content is part of the data's identity."""
    return {
        "user_files": {p: file_sha256(Path(p)) for p in bidsml.prepare.user_files(recipe.data) if Path(p).is_file()}
    }


def build(b: Build) -> dict:
    """Loads pool and targets, rejects malformed/untrainable records; returns the data report."""
    recipe = b.recipe
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
    save_data(b.work, kept, val, report)
    return {k: v for k, v in report.items() if k != "pool_rejected"} | {"n_rejected": len(rejected)}


STEP = Step(
    name="data",
    doc="Loads the pool and validation sets, rejecting malformed and untrainable records.",
    sections=("data", "sampling_seed", "model"),
    identity=user_files,
    build=build,
)
