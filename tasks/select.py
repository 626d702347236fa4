"""Step 4: one selection method at one budget; exports the subset as JSONL.

The method is looked up in the selector registry (bidsml.selectors); the
inputs it declares (influence, representations) are loaded and passed, and
only those are part of the selection's identity.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from bidsml.config import Recipe
from bidsml.errors import SelectionError
from bidsml.selection import resolve_budget, selection_label, task_means
from bidsml.selectors import SelectorInputs, get_selector, run_selector
from storage.datasets import load_split
from storage.influence_store import (
    load_column_stats,
    load_influence_tables,
    read_influence_matrix,
    read_influence_rows,
)
from storage.refs import ArtifactRef, Plan, materialize
from storage.representations import load_representations
from storage.selections import save_selection
from tasks.common import (
    ArtifactCachePolicy,
    artifact_key,
    code_version,
    post_table,
    publish,
    ref_inputs,
    run_root,
    run_tag,
)

CODE = code_version(__name__)


def plan_select(
    recipe: Recipe, data: ArtifactRef, infl: ArtifactRef, method: str, budget: float, reps: ArtifactRef | None = None
) -> Plan:
    needs = get_selector(method).needs
    return Plan(
        run_root=run_root(recipe),
        kind="selection",
        inputs={
            **ref_inputs(data=data, influence=infl, representations=reps if "representations" in needs else None),
            "method": method,
            "budget": budget,
            "seed": recipe.seed,
            "code": CODE,
        },
    )


def composition(
    A_rows: np.ndarray, mean: np.ndarray, std: np.ndarray, constant: np.ndarray, tasks: list[str], sources: list[str]
) -> dict:
    """Returns counts of selected rows by source and by the task each most influences (z-scored over the pool).

    Args:
        A_rows: the selected rows' raw influence (K, M); mean, std, constant: per-column stats over the pool.
        tasks: the M validation task labels; sources: the K selected rows' sources.
    """
    kept = np.flatnonzero(~constant)
    Z = (A_rows[:, kept].astype(np.float64) - mean[kept]) / std[kept]
    means, names = task_means(Z, [tasks[j] for j in kept])
    top_task = [names[i] for i in means.argmax(axis=1)]
    by_source = pd.Series(sources).value_counts().sort_index().to_dict()
    by_task = pd.Series(top_task).value_counts().sort_index().to_dict()
    per_task_mean = dict(zip(names, means.mean(axis=0).round(4).tolist()))
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
    needs = get_selector(method).needs

    def build(work: Path) -> dict:
        train, val = load_influence_tables(infl.path)
        tasks = val["task"].tolist()
        n = len(train)
        A = read_influence_matrix(infl.path) if "influence" in needs else None
        # the store's column statistics: the selector owns A and may z-score it in place (4 GB, not 8, at 1M x 1k)
        mean, std, constant = load_column_stats(infl.path)
        inputs = SelectorInputs(tasks=tasks, influence=A, owned=True)
        if "representations" in needs:
            if reps is None:
                raise SelectionError(f"method {method!r} needs the representations artifact (the represent step)")
            inputs.representations = load_representations(reps)
        rows = run_selector(method, inputs, budget, recipe.seed)
        del A, inputs
        sources = train["source"].to_numpy()
        comp = composition(read_influence_rows(infl.path, rows), mean, std, constant, tasks, sources[rows].tolist())
        table = pd.DataFrame(
            {
                "rank": np.arange(len(rows)),
                "train_idx": rows,
                "id": train["id"].to_numpy()[rows],
                "source": train["source"].to_numpy()[rows],
                "top_task": comp.pop("top_task"),
            }
        )
        pool = load_split(data, "train")
        summary = {
            "method": method,
            "budget": budget,
            "k": int(resolve_budget(budget, n)),
            "n_pool": int(n),
            "dropped_constant_columns": np.flatnonzero(constant).tolist(),
            **comp,
        }
        save_selection(work, table, [pool[i] for i in rows], summary)
        post_table(
            [{"source": s, "selected": int(n)} for s, n in summary["by_source"].items()],
            key=artifact_key("selection", run_tag(recipe, selection_label(method, budget))),
            description=f"{method} @ {budget}: composition by source",
        )
        return summary

    ref = materialize(plan_select(recipe, data, infl, method, budget, reps), build, force=refresh)
    inputs = [data, infl] + ([reps] if "representations" in needs and reps is not None else [])
    params = {"method": method, "budget": budget, "seed": recipe.seed}
    return publish(ref, "select_subset", params, inputs, started, tag=run_tag(recipe, selection_label(method, budget)))
