"""Step `diagnostics`: per-task influence statistics and distributions, and the influence fidelity check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bidsml.gradients.fidelity import fidelity_warnings, task_fidelity_table
from bidsml.influence.plots import plot_influence_distributions
from tasks.step import Build, Input, Step
from storage.fidelity_sample import load_measurement
from storage.influence_store import load_influence_tables, open_influence, read_influence_rows
from storage.names import DIAGNOSTICS_FIDELITY as FIDELITY
from storage.names import DIAGNOSTICS_PLOT as PLOT
from storage.names import DIAGNOSTICS_STATS as STATS
from storage.names import PROJECTION_SAMPLE

PLOT_ROWS = 100_000  # the distribution plot uses a seeded sample of pool rows at most this large


def influence_fidelity(projection) -> list[dict] | None:
    """Returns the fidelity table at the features' k from the projection step's measurement (None when it measured
    nothing: `proj_dim: exact`, or `features.fidelity_rows: 0`): per task, Spearman of the projected vs the exact
    task-mean influence of the fidelity sample at the first warmup checkpoint."""
    path = projection.path / PROJECTION_SAMPLE
    k = projection.meta["k"]
    if not path.exists():
        return None
    m = load_measurement(path)
    if k not in m["projected"]:
        return None
    return task_fidelity_table(m["tasks"], m["exact"], m["projected"][k], m["columns"])


def build(b: Build) -> dict:
    """Writes per-task influence statistics (SQL view task_stats), a distribution plot and the influence fidelity.

    Fidelity (unless `features.fidelity_rows` is 0 or the features are exact): the Spearman correlation, per task,
    of the projected influence with the exact unprojected one on a seeded sample of pool rows, as the projection
    step measured it (no gradients here); a warning names the fix when it is below 0.9.
    """
    infl = b.inputs["influence"]
    train, val = load_influence_tables(infl.path)
    n = len(train)
    rows = np.arange(n) if n <= PLOT_ROWS else np.sort(np.random.default_rng(0).choice(n, PLOT_ROWS, replace=False))
    plot_influence_distributions(read_influence_rows(infl.path, rows), val["task"].tolist(), b.work / PLOT)
    con = open_influence(infl.path)
    try:
        stats = con.sql("SELECT * FROM task_stats").df().round(4).to_dict(orient="records")
    finally:
        con.close()
    (b.work / STATS).write_text(json.dumps(stats, indent=1, sort_keys=True))
    b.table("influence-task-stats", stats, "influence per task, raw and normalised")
    out = {"task_stats": stats}
    fidelity = influence_fidelity(b.inputs["projection"])
    if fidelity is not None:
        pd.DataFrame(fidelity).to_parquet(b.work / FIDELITY, index=False)
        warnings = fidelity_warnings(fidelity, b.inputs["projection"].meta["k"])
        for w in warnings:
            b.log(w, warning=True)
        b.table(
            "influence-fidelity",
            fidelity,
            "Spearman of projected vs exact influence per task (>= 0.9: rankings are not noise), "
            "measured by the projection step",
        )
        out |= {"fidelity": fidelity, "fidelity_warnings": warnings}
    return out


def report(ref) -> dict:
    """Returns what the run report shows of the diagnostics: per-task statistics, the distribution plot (a file of
    the artifact) and the fidelity table with its warnings."""
    return {
        "task_stats": ref.meta["task_stats"],
        "plot": ref.path / PLOT,
        "fidelity": ref.meta.get("fidelity"),
        "fidelity_warnings": ref.meta.get("fidelity_warnings", []),
    }


STEP = Step(
    name="diagnostics",
    doc="Per-task influence statistics, distribution plot and fidelity (projected vs exact influence).",
    inputs=(Input("influence"), Input("projection")),  # the fidelity: the projection step's measurement
    images={"influence distributions": PLOT},
    report=report,
    build=build,
)
