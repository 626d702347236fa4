"""Repeats over seeds and the paired comparison of methods (a recipe with `seeds`).

Each seed is a whole, independent pipeline run (warmup data order and LoRA
init, projection seed, validation draw, random selection and fine-tuning
follow the seed; the pool sources and scored items follow the data seed). With
`shared_influence` (a flow parameter, `bidsflow run --shared-influence`),
the warmup, features and influence are the first seed's in every seed, and
only random selection and fine-tuning vary. Then every
method's per-item scores go into a paired bootstrap against `random` and
`less` (bidsml.report.experiment), written as experiment.csv, experiment.png and
experiment.md in the run's outputs and posted to the UI.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bidsml.config import Recipe
from bidsml.report.experiment import compare_methods, plot_differences
from bidsml.report.experiment_report import evidence_section, experiment_report, recovery_section, tuning_section
from bidsml.report.markdown import artifact_key
from bidsml.report.run import composition_frame
from bidsml.selection import resolve_budget, selection_label
from flows.ui import post_report
from storage.datasets import load_split
from storage.evaluations import load_evaluation_items
from storage.names import BUILD_INFO
from storage.runs import MAIN
from storage.selections import load_subset

BASELINES = ("random", "less")  # every method is compared with these (the plot draws them)
# with an evidence recipe, also with these (its JSON reports BIDS - BM25, BIDS - RDS+, BIDS - oracle)
EVIDENCE_BASELINES = ("bm25", "rds-plus", "oracle")


def run_experiment(
    recipe: Recipe, refresh: set[str], out: Path, run_steps: Callable[..., dict], shared_influence: bool = False
) -> dict:
    """Runs the pipeline (`run_steps`, flows.pipeline's) once per seed, then compares methods; returns paths.
    `shared_influence`: every seed's warmup, features and influence are the first seed's."""
    started = time.time()
    recipe_sha = recipe_sha256(recipe)  # as given, before the tuning replaces the fine-tuning settings
    recipe, tuning = choose_finetune(recipe)
    rows, selections, seed_runs, picked, data_ref, built = [], [], {}, [], None, {}
    front = recipe.for_seed(recipe.seeds[0]) if shared_influence else None
    for s in recipe.seeds:
        one = recipe.for_seed(s)
        res = run_steps(one, refresh, out / f"seed-{s}", f"BIDS run: {recipe.name}, seed {s}", front=front)
        refs = res.pop("refs")
        seed_runs[s] = res
        for by in refs.values():  # each artifact the experiment used, once: what building it took
            built.update({r.identity: (r.meta.get(BUILD_INFO) or {}).get("seconds", 0.0) for r in by.values()})
        data_ref = refs["data"][MAIN]
        for label, ref in refs["evaluation"].items():
            items = load_evaluation_items(ref)
            rows.append(items.assign(method=label, seed=None if label in ("base", "original") else s))
        selections += [{**sel.meta, "seed": s} for sel in refs["selection"].values()]
        picked += [
            {
                "selection": label,
                "method": sel.meta["method"],
                "budget": sel.meta["budget"],
                "seed": s,
                "planted_for": [e.planted_for for e in load_subset(sel)],
            }
            for label, sel in refs["selection"].items()
        ]
    pool_planted = [e.planted_for for e in load_split(data_ref, "train")]
    planted = any(pool_planted)
    items = pd.concat(rows, ignore_index=True).drop_duplicates(["method", "seed", "id"])
    budgets = recipe.selection.budgets
    methods = ["base"] + [selection_label(m, b) for b in budgets for m in recipe.selection.methods]
    tables = []
    metrics = [m for m in ("score", "nll", "bpb") if m in items.columns]
    for b in budgets:
        names = BASELINES + (EVIDENCE_BASELINES if planted else ())
        base = [selection_label(m, b) for m in names if m in recipe.selection.methods]
        base += ["base"] if planted else []  # the evidence gate: the oracle against the base model
        ms = ["base"] + [selection_label(m, b) for m in recipe.selection.methods]
        tables.append(compare_methods(items, ms, base, metrics).assign(budget=b))
    table = pd.concat(tables, ignore_index=True)
    baselines = [c.removeprefix("diff_vs_") for c in table.columns if c.startswith("diff_vs_")]
    drawn = [b for b in baselines if b.split("@")[0] in BASELINES] or baselines
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "experiment.csv", index=False)
    plot_differences(table[table["method"] != "base"], drawn, out / "experiment.png")
    comp = composition_frame(selections).assign(seed=[s["seed"] for s in selections])
    comp.to_csv(out / "experiment-composition.csv", index=False)
    report = out / "experiment.md"
    text = experiment_report(recipe, table, comp, drawn, seed_runs, items, time.time() - started, shared_influence)
    if planted:
        extra = {
            "items": items,
            "recipe_sha256": recipe_sha,
            "seeds_independent": not shared_influence,
            "selections": selections,
        }
        text = evidence_section(recipe, table, pool_planted, picked, tuning, out, started, **extra) + text
    elif tuning is not None:
        text = tuning_section(recipe, tuning) + text
    if recipe.prune is not None:  # PASER's setting: the recovery of the pruned model comes first
        extra = (recipe_sha, not shared_influence, planted, round(sum(built.values()), 1))
        text = recovery_section(recipe, items, selections, out, started, *extra) + text
    report.write_text(text)
    post_report(report, artifact_key(recipe.name, "experiment-report"), "BIDS vs baselines over seeds")
    return {
        "report": str(report),
        "table": str(out / "experiment.csv"),
        "plot": str(out / "experiment.png"),
        "seeds": {str(s): r["report"] for s, r in seed_runs.items()},
        "methods": methods,
    }


def choose_finetune(recipe: Recipe) -> tuple[Recipe, pd.DataFrame | None]:
    """Returns the recipe with the fine-tuning lr and epochs of `recipe.tuning`'s best trial (lowest mean validation
    NLL over targets, each trial a cached `tune` step on the same random subset) and the trials' table; unchanged
    and None without `tuning`."""
    from flows.step_flows import STEP_FLOWS  # here: the step flows import this module's siblings

    t = recipe.tuning
    if t is None or not (t.lrs or t.epochs):
        return recipe, None
    one = recipe.for_seed(recipe.seeds[0]) if recipe.seeds else recipe
    data = STEP_FLOWS["data"](one)
    k = resolve_budget(t.budget, len(load_split(data, "train")))
    trials = []
    for lr in t.lrs or (recipe.finetune.lr,):
        for epochs in t.epochs or (recipe.finetune.epochs,):
            ref = STEP_FLOWS["tune"](
                one, inputs={"data": data}, params={"lr": lr, "epochs": epochs, "k": k, "seed": one.seed}
            )
            trials.append(
                {"lr": lr, "epochs": epochs, "k": k, "val_nll_macro": ref.meta["val_nll_macro"]}
                | {f"val_nll {task}": v for task, v in ref.meta["val_nll"].items()}
            )
    table = pd.DataFrame(trials).sort_values(["val_nll_macro", "lr", "epochs"], kind="stable").reset_index(drop=True)
    best = table.iloc[0]
    finetune = recipe.finetune.model_copy(update={"lr": float(best["lr"]), "epochs": int(best["epochs"])})
    return recipe.model_copy(update={"finetune": finetune}), table




def recipe_sha256(recipe: Recipe) -> str:
    """Returns the sha256 of the recipe's canonical JSON (every setting, defaults included): a later edit shows."""
    return hashlib.sha256(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()












# what the diversity baselines read in place of their papers' inputs (named wherever their results are shown)
