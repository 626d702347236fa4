"""Diagnostics of an influence run: per-task statistics and distributions, raw and normalised."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from bidsml.config import Recipe
from bidsml.data import tokenize_all
from bidsml.fidelity import exact_influence, fidelity_table, fidelity_warnings
from bidsml.model import load_tokenizer
from bidsml.report import plot_influence_distributions
from storage.checkpoint_states import feature_model
from storage.checkpoints import load_checkpoints
from storage.datasets import load_split
from storage.influence_store import load_influence_tables, open_influence, read_influence_rows
from storage.names import DIAGNOSTICS_FIDELITY as FIDELITY
from storage.names import DIAGNOSTICS_PLOT as PLOT
from storage.names import DIAGNOSTICS_STATS as STATS
from storage.refs import ArtifactRef, Plan, materialize
from tasks.common import (
    ArtifactCachePolicy,
    artifact_key,
    code_version,
    logger,
    model_inputs,
    post_table,
    publish,
    ref_inputs,
    run_root,
    run_tag,
)

CODE = code_version(__name__)
PLOT_ROWS = 100_000  # the distribution plot uses a seeded sample of pool rows at most this large
FIDELITY_SEED = 0  # the rows of the fidelity check: a seeded sample, the same for every run of a pool


def plan_diagnose(recipe: Recipe, infl: ArtifactRef, data: ArtifactRef | None, warm: ArtifactRef | None) -> Plan:
    fidelity = {}
    if recipe.features.fidelity_rows and data is not None and warm is not None:
        fidelity = {
            **ref_inputs(data=data, warmup=warm),
            **model_inputs(recipe),
            "rows": recipe.features.fidelity_rows,
            "eps_inside_sqrt": recipe.features.eps_inside_sqrt,
        }
    return Plan(
        run_root=run_root(recipe),
        kind="diagnostics",
        inputs={**ref_inputs(influence=infl), "fidelity": fidelity, "code": CODE},
    )


def influence_fidelity(recipe: Recipe, infl: ArtifactRef, data: ArtifactRef, warm: ArtifactRef) -> list[dict]:
    """Returns the fidelity table: projected vs exact influence on a seeded sample of pool rows, per task."""
    pool, val = load_split(data, "train"), load_split(data, "val")
    n = min(recipe.features.fidelity_rows, len(pool))
    rows = np.sort(np.random.default_rng(FIDELITY_SEED).choice(len(pool), n, replace=False))
    tok = load_tokenizer(recipe.model)
    train_items, _ = tokenize_all(tok, [pool[i] for i in rows], recipe.model.max_seq_length)
    val_items, _ = tokenize_all(tok, val, recipe.model.max_seq_length)
    model, states, precision = feature_model(recipe, warm)
    weights = [c["weight"] for c in load_checkpoints(warm)]
    exact = exact_influence(
        model, train_items, val_items, states, weights, tok.pad_token_id, recipe.features.max_tokens, precision
    )
    projected = read_influence_rows(infl.path, rows).astype(np.float64)
    return fidelity_table(projected, exact, [e.task for e in val])


@task(cache_policy=ArtifactCachePolicy(plan=plan_diagnose), persist_result=True)
def diagnose(
    recipe: Recipe,
    infl: ArtifactRef,
    data: ArtifactRef | None = None,
    warm: ArtifactRef | None = None,
    refresh: bool = False,
) -> ArtifactRef:
    """Writes per-task influence statistics (SQL view task_stats), a distribution plot and the influence fidelity.

    Fidelity (with `data` and `warm`, unless `features.fidelity_rows` is 0):
    the Spearman correlation, per task, of the projected influence with the
    exact unprojected one on a seeded sample of pool rows; a warning names
    the fix when it is below 0.9.
    """
    started = time.time()

    def build(work: Path) -> dict:
        train, val = load_influence_tables(infl.path)
        n = len(train)
        rows = np.arange(n) if n <= PLOT_ROWS else np.sort(np.random.default_rng(0).choice(n, PLOT_ROWS, replace=False))
        plot_influence_distributions(read_influence_rows(infl.path, rows), val["task"].tolist(), work / PLOT)
        con = open_influence(infl.path)
        try:
            stats = con.sql("SELECT * FROM task_stats").df().round(4).to_dict(orient="records")
        finally:
            con.close()
        (work / STATS).write_text(json.dumps(stats, indent=1, sort_keys=True))
        post_table(
            stats,
            key=artifact_key("influence-task-stats", run_tag(recipe)),
            description="influence per task, raw and normalised",
        )
        out = {"task_stats": stats}
        if plan_diagnose(recipe, infl, data, warm).inputs["fidelity"]:
            fidelity = influence_fidelity(recipe, infl, data, warm)
            pd.DataFrame(fidelity).to_parquet(work / FIDELITY, index=False)
            warnings = fidelity_warnings(fidelity, recipe.features.proj_dim)
            for w in warnings:
                logger().warning(w)
            post_table(
                [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in fidelity],
                key=artifact_key("influence-fidelity", run_tag(recipe)),
                description="Spearman of projected vs exact influence per task (>= 0.9: rankings are not noise)",
            )
            out |= {"fidelity": fidelity, "fidelity_warnings": warnings}
        return out

    ref = materialize(plan_diagnose(recipe, infl, data, warm), build, force=refresh)
    inputs = [infl] + ([data, warm] if data is not None and warm is not None else [])
    return publish(
        ref, "diagnose", {}, inputs, started, images={"influence distributions": ref.path / PLOT}, tag=run_tag(recipe)
    )
