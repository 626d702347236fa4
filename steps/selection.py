"""Step `selection`: one selection method at one budget; exports the subset as JSONL.

The method is looked up in the selector registry (bidsml.selectors); the
inputs it declares (influence, representations) are loaded and passed, and
only those are part of the selection's identity.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from bidsml.errors import SelectionError
from bidsml.selection import resolve_budget, selection_label, task_means
from bidsml.selectors import DEFAULT_METHOD, SELECTORS, SelectorInputs, get_selector, run_selector
from steps.step import Build, Input, Step
from storage.datasets import load_split
from storage.influence_store import (
    load_column_stats,
    load_influence_tables,
    read_influence_matrix,
    read_influence_rows,
)
from storage.representations import load_representations
from storage.selections import save_selection


class SelectionParams(BaseModel):
    """What a person chooses for one selection."""

    method: Literal[tuple(sorted(SELECTORS))] = Field(  # type: ignore[valid-type]
        DEFAULT_METHOD, description="Selection method (a registered selector: random, less, bids, ...)."
    )
    budget: float = Field(0.1, gt=0, description="How much to select: a count (>= 1) or a fraction of the pool (< 1).")


def needs_representations(params: SelectionParams | None) -> bool:
    return params is not None and "representations" in get_selector(params.method).needs


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


def build(b: Build) -> dict:
    """Runs one selection method; writes the ranked table and the JSONL subset; returns the composition."""
    method, budget, infl = b.params.method, b.params.budget, b.inputs["influence"]
    needs = get_selector(method).needs
    train, val = load_influence_tables(infl.path)
    tasks = val["task"].tolist()
    n = len(train)
    A = read_influence_matrix(infl.path) if "influence" in needs else None
    # the store's column statistics: the selector owns A and may z-score it in place (4 GB, not 8, at 1M x 1k)
    mean, std, constant = load_column_stats(infl.path)
    inputs = SelectorInputs(tasks=tasks, influence=A, owned=True)
    if "representations" in needs:
        if b.inputs.get("representations") is None:
            raise SelectionError(f"method {method!r} needs the representations artifact (the representations step)")
        inputs.representations = load_representations(b.inputs["representations"])
    rows = run_selector(method, inputs, budget, b.recipe.seed)
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
    pool = load_split(b.inputs["data"], "train")
    summary = {
        "method": method,
        "budget": budget,
        "k": int(resolve_budget(budget, n)),
        "n_pool": int(n),
        "dropped_constant_columns": np.flatnonzero(constant).tolist(),
        **comp,
    }
    save_selection(b.work, table, [pool[i] for i in rows], summary)
    b.table(
        "selection",
        [{"source": s, "selected": int(c)} for s, c in summary["by_source"].items()],
        f"{method} @ {budget}: composition by source",
    )
    return summary


def label(inputs, params: SelectionParams) -> str:
    return selection_label(params.method, params.budget)


STEP = Step(
    name="selection",
    doc="Selects a subset with one method at one budget.",
    inputs=(
        Input("data"),
        Input("influence"),
        Input("representations", optional=True, when=needs_representations),
    ),
    sections=("seed",),
    params=SelectionParams,
    label=label,
    per_run=False,
    build=build,
)
