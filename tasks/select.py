"""Step 4: one selection method at one budget over the influence store; exports the subset as JSONL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact

import bidsml.selection
from bidsml.config import Recipe
from bidsml.data import write_jsonl
from bidsml.errors import SelectionError
from bidsml.selection import constant_columns, normalize_columns, resolve_budget, select, task_means
from storage.influence_store import load_influence
from storage.names import POOL_FILE, SELECTION_PARQUET, SELECTION_SUMMARY, SUBSET_JSONL
from storage.refs import ArtifactRef, Plan, materialize
from tasks.common import ArtifactCachePolicy, code_version, publish, ref_inputs, run_root
from tasks.data import load_split
from tasks.represent import rds_scores

CODE = code_version(bidsml.selection)


def plan_select(
    recipe: Recipe, data: ArtifactRef, infl: ArtifactRef, method: str, budget: float, reps: ArtifactRef | None = None
) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="selection",
        inputs={
            **ref_inputs(data=data, influence=infl, representations=reps if method == "rds" else None),
            "method": method,
            "budget": budget,
            "seed": recipe.seed,
            "code": CODE,
        },
    )


def composition(A: np.ndarray, tasks: list[str], sources: list[str], rows: np.ndarray) -> dict:
    """Returns counts of the selected rows by source and by the task each most influences (normalised)."""
    Z, kept = normalize_columns(A)
    means, names = task_means(Z, [tasks[j] for j in kept])
    top_task = [names[i] for i in means[rows].argmax(axis=1)]
    by_source = pd.Series([sources[r] for r in rows]).value_counts().sort_index().to_dict()
    by_task = pd.Series(top_task).value_counts().sort_index().to_dict()
    per_task_mean = dict(zip(names, means[rows].mean(axis=0).round(4).tolist()))
    return {
        "by_source": by_source,
        "by_top_task": by_task,
        "mean_normalized_influence": per_task_mean,
        "top_task": top_task,
    }


@task(cache_policy=ArtifactCachePolicy(plan=plan_select), persist_result=True)
def select_subset(
    recipe: Recipe,
    data: ArtifactRef,
    infl: ArtifactRef,
    method: str,
    budget: float,
    reps: ArtifactRef | None = None,
    refresh: bool = False,
) -> ArtifactRef:
    """Runs one selection method; returns the selection artifact (ranked table + JSONL subset)."""
    started = time.time()

    def build(work: Path) -> dict:
        A, train, val = load_influence(infl.path)
        tasks = val["task"].tolist()
        if method == "rds":
            if reps is None:
                raise SelectionError("method 'rds' needs the representations artifact (the pipeline computes it)")
            rows = select(method, rds_scores(reps), tasks, budget, recipe.seed)
        else:
            rows = select(method, A, tasks, budget, recipe.seed)
        comp = composition(A, tasks, train["source"].tolist(), rows)
        table = pd.DataFrame(
            {
                "rank": np.arange(len(rows)),
                "train_idx": rows,
                "id": train["id"].to_numpy()[rows],
                "source": train["source"].to_numpy()[rows],
                "top_task": comp.pop("top_task"),
            }
        )
        table.to_parquet(work / SELECTION_PARQUET, index=False)
        pool = load_split(data, POOL_FILE)
        write_jsonl([pool[i] for i in rows], work / SUBSET_JSONL)
        summary = {
            "method": method,
            "budget": budget,
            "k": int(resolve_budget(budget, A.shape[0])),
            "n_pool": int(A.shape[0]),
            "dropped_constant_columns": constant_columns(A),
            **comp,
        }
        (work / SELECTION_SUMMARY).write_text(json.dumps(summary, indent=1))
        try:
            create_table_artifact(
                [{"source": s, "selected": int(n)} for s, n in summary["by_source"].items()],
                key=f"selection-{method}".replace("_", "-"),
                description=f"{method} @ {budget}: composition by source",
            )
        except Exception:
            pass
        return summary

    ref = materialize(plan_select(recipe, data, infl, method, budget, reps), build, force=refresh)
    inputs = [data, infl] + ([reps] if method == "rds" and reps is not None else [])
    return publish(ref, "select_subset", {"method": method, "budget": budget, "seed": recipe.seed}, inputs, started)
