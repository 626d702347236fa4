"""The whole BIDS pipeline, top to bottom, as subflows of cached steps.

data -> warmup LoRA -> gradient features -> influence -> for each method and
budget: selection -> fine-tuning -> evaluation (plus the base model) -> report.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from bidsml.config import Recipe
from bidsml.report import write_report
from bidsml.selection import selection_label
from flows.steps import (
    data_flow,
    diagnose_flow,
    evaluate_flow,
    features_flow,
    finetune_flow,
    influence_flow,
    represent_flow,
    select_flow,
    warmup_flow,
)
from storage.names import SUBSET_JSONL
from storage.runs import save_run_record
from tasks.diagnose import PLOT

STEPS = ("data", "warmup", "features", "influence", "diagnose", "represent", "select", "finetune", "evaluate")


def output_dir(recipe: Recipe) -> Path:
    """Returns the folder with the run's human-facing outputs (report, tables, plots)."""
    return Path(recipe.run_root).resolve() / recipe.name


@flow(name="bids-pipeline", log_prints=True)
def pipeline(recipe: Recipe, refresh: list[str] | None = None) -> dict:
    """Runs every step (cached) and writes the report; returns the run's refs and output paths.

    Args:
        recipe: the run's settings.
        refresh: step names to recompute even when cached (see STEPS).
    """
    refresh = set(refresh or [])
    unknown = refresh - set(STEPS)
    if unknown:
        raise ValueError(f"unknown step(s) in refresh: {sorted(unknown)}; steps are {', '.join(STEPS)}")
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kw):
        t = time.time()
        out = fn(*args, refresh=name.split(":")[0] in refresh, **kw)
        timings[name] = time.time() - t
        return out

    data = timed("data", data_flow, recipe)
    warm = timed("warmup", warmup_flow, recipe, data)
    feats = timed("features", features_flow, recipe, data, warm)
    infl = timed("influence", influence_flow, recipe, data, warm, feats)
    diag = timed("diagnose", diagnose_flow, recipe, infl)
    reps = timed("represent", represent_flow, recipe, data) if "rds" in recipe.selection.methods else None
    evals = [timed("evaluate:base", evaluate_flow, recipe, data, None)]
    selections, adapters = [], []
    for method in recipe.selection.methods:
        for budget in recipe.selection.budgets:
            tag = selection_label(method, budget)
            sel = timed(f"select:{tag}", select_flow, recipe, data, infl, method, budget, reps)
            ft = timed(f"finetune:{tag}", finetune_flow, recipe, sel)
            evals.append(timed(f"evaluate:{tag}", evaluate_flow, recipe, data, ft))
            selections.append(sel)
            adapters.append(ft)

    out = output_dir(recipe)
    subsets = {selection_label(s.meta["method"], s.meta["budget"]): str(s.path / SUBSET_JSONL) for s in selections}
    report = write_report(
        out,
        f"BIDS run: {recipe.name}",
        data.meta,
        [e.meta for e in evals],
        [s.meta for s in selections],
        subsets,
        timings,
        {"task_stats": diag.meta["task_stats"], "plot": diag.path / PLOT},
    )
    create_markdown_artifact(report.read_text(), key="run-report", description=f"report of {recipe.name}")
    run_id = str(flow_run.get_id() or f"local-{int(time.time())}")
    refs = {
        "data": data,
        "warmup": warm,
        "features": feats,
        "influence": infl,
        "diagnostics": diag,
        "selections": {selection_label(s.meta["method"], s.meta["budget"]): s for s in selections},
        "finetunes": {selection_label(a.meta["method"], a.meta["budget"]): a for a in adapters},
        "evaluations": {e.meta["model"]: e for e in evals},
        **({"representations": reps} if reps is not None else {}),
    }
    record = save_run_record(
        Path(recipe.run_root).resolve(),
        run_id,
        recipe.model_dump(mode="json"),
        refs,
        {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "report": str(report), "timings": timings},
    )
    return {
        "run_id": run_id,
        "report": str(report),
        "outputs": str(out),
        "subsets": subsets,
        "record": str(record),
        "evaluation": str(out / "evaluation.csv"),
    }
