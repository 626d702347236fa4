"""Diagnostics of an influence run: per-task statistics and distributions, raw and normalised."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from prefect import task

from bidsml.config import Recipe
from bidsml.report import plot_influence_distributions
from storage.influence_store import load_influence_tables, open_influence, read_influence_rows

PLOT_ROWS = 100_000  # the distribution plot uses a seeded sample of pool rows at most this large
from storage.names import DIAGNOSTICS_PLOT as PLOT
from storage.names import DIAGNOSTICS_STATS as STATS
from storage.refs import ArtifactRef, Plan, materialize
from tasks.common import ArtifactCachePolicy, code_version, post_table, publish, ref_inputs, run_root

CODE = code_version(__name__)


def plan_diagnose(recipe: Recipe, infl: ArtifactRef) -> Plan:
    return Plan(run_root=run_root(recipe), kind="diagnostics", inputs={**ref_inputs(influence=infl), "code": CODE})


@task(cache_policy=ArtifactCachePolicy(plan=plan_diagnose), persist_result=True)
def diagnose(recipe: Recipe, infl: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Writes per-task influence statistics (SQL view task_stats) and a distribution plot."""
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
        post_table(stats, key="influence-task-stats", description="influence per task, raw and normalised")
        return {"task_stats": stats}

    ref = materialize(plan_diagnose(recipe, infl), build, force=refresh)
    return publish(ref, "diagnose", {}, [infl], started, images={"influence distributions": ref.path / PLOT})
