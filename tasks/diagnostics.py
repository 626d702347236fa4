"""Step `diagnostics`: per-task influence statistics and distributions, and the influence fidelity check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bidsml.data.examples import tokenize_all
from bidsml.gradients.fidelity import exact_influence, fidelity_sample, fidelity_table, fidelity_warnings
from bidsml.influence.plots import plot_influence_distributions
from bidsml.model import load_tokenizer
from tasks.step import Build, Input, Step
from bidsml.gradients.checkpoints import feature_model
from storage.checkpoints import load_checkpoints
from storage.datasets import load_split
from storage.influence_store import load_influence_tables, open_influence, read_influence_rows
from storage.names import DIAGNOSTICS_FIDELITY as FIDELITY
from storage.names import DIAGNOSTICS_PLOT as PLOT
from storage.names import DIAGNOSTICS_STATS as STATS

PLOT_ROWS = 100_000  # the distribution plot uses a seeded sample of pool rows at most this large


def influence_fidelity(recipe, infl, data, warm) -> list[dict]:
    """Returns the fidelity table: projected vs exact influence on a seeded sample of pool rows, per task."""
    pool, val = load_split(data, "train"), load_split(data, "val")
    rows = fidelity_sample(len(pool), recipe.features.fidelity_rows)
    tok = load_tokenizer(recipe.model)
    train_items, _ = tokenize_all(tok, [pool[i] for i in rows], recipe.model.max_seq_length)
    val_items, _ = tokenize_all(tok, val, recipe.model.max_seq_length)
    model, states, precision = feature_model(recipe.model, recipe.features, warm.path, load_checkpoints(warm))
    weights = [c["weight"] for c in load_checkpoints(warm)]
    exact = exact_influence(
        model, train_items, val_items, states, weights, tok.pad_token_id, recipe.features.max_tokens, precision
    )
    projected = read_influence_rows(infl.path, rows).astype(np.float64)
    return fidelity_table(projected, exact, [e.task for e in val])


def build(b: Build) -> dict:
    """Writes per-task influence statistics (SQL view task_stats), a distribution plot and the influence fidelity.

    Fidelity (unless `features.fidelity_rows` is 0): the Spearman correlation, per task, of the projected
    influence with the exact unprojected one on a seeded sample of pool rows; a warning names the fix when it is
    below 0.9.
    """
    recipe, infl = b.recipe, b.inputs["influence"]
    train, val = load_influence_tables(infl.path)
    n = len(train)
    rows = np.arange(n) if n <= PLOT_ROWS else np.sort(np.random.default_rng(0).choice(n, PLOT_ROWS, replace=False))
    plot_influence_distributions(read_influence_rows(infl.path, rows), val["task"].tolist(), b.work / PLOT)
    con = open_influence(infl.path, scores=False)
    try:
        stats = con.sql("SELECT * FROM task_stats").df().round(4).to_dict(orient="records")
    finally:
        con.close()
    (b.work / STATS).write_text(json.dumps(stats, indent=1, sort_keys=True))
    b.table("influence-task-stats", stats, "influence per task, raw and normalised")
    out = {"task_stats": stats}
    if recipe.features.fidelity_rows:
        fidelity = influence_fidelity(recipe, infl, b.inputs["data"], b.inputs["warmup"])
        pd.DataFrame(fidelity).to_parquet(b.work / FIDELITY, index=False)
        warnings = fidelity_warnings(fidelity, b.inputs["projection"].meta["k"])
        for w in warnings:
            b.log(w, warning=True)
        b.table(
            "influence-fidelity",
            fidelity,
            "Spearman of projected vs exact influence per task (>= 0.9: rankings are not noise)",
        )
        out |= {"fidelity": fidelity, "fidelity_warnings": warnings}
    return out


STEP = Step(
    name="diagnostics",
    doc="Per-task influence statistics, distribution plot and fidelity (projected vs exact influence).",
    inputs=(Input("influence"), Input("data"), Input("warmup"), Input("projection")),
    sections=("model", "features"),
    # batching, storage layout, and what only chooses k (the projection input says which k)
    ignore={"features": ("max_tokens", "chunk_rows", "threads", "min_fidelity", "max_store_gb")},
    images={"influence distributions": PLOT},
    build=build,
)
