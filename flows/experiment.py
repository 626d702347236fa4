"""Repeats over seeds and the paired comparison of methods (a recipe with `seeds`).

Each seed is a whole pipeline run (warmup order, random selection and
fine-tuning follow the seed; data and scored items follow the data seed, so
the data step and the base model's evaluation are computed once). Then every
method's per-item scores go into a paired bootstrap against `random` and
`less` (bidsml.experiment), written as experiment.csv, experiment.png and
experiment.md in the run's outputs and posted to the UI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from prefect.artifacts import create_markdown_artifact

from bidsml.config import Recipe
from bidsml.experiment import MACRO, WORST, compare_methods, plot_differences, verdict
from bidsml.markdown import artifact_key, inline_images
from bidsml.report import composition_frame, markdown_table
from bidsml.selection import selection_label
from storage.evaluations import load_evaluation_items

BASELINES = ("random", "less")


def run_experiment(recipe: Recipe, refresh: set[str], out: Path, run_steps: Callable[..., dict]) -> dict:
    """Runs the pipeline (`run_steps`, flows.pipeline's) once per seed, then compares methods; returns paths."""
    started = time.time()
    rows, selections, seed_runs = [], [], {}
    for s in recipe.seeds:
        one = recipe.for_seed(s)
        res = run_steps(one, refresh, out / f"seed-{s}", f"BIDS run: {recipe.name}, seed {s}")
        refs = res.pop("refs")
        seed_runs[s] = res
        for label, ref in refs["evaluation"].items():
            items = load_evaluation_items(ref)
            rows.append(items.assign(method=label, seed=None if label == "base" else s))
        selections += [{**sel.meta, "seed": s} for sel in refs["selection"].values()]
    items = pd.concat(rows, ignore_index=True).drop_duplicates(["method", "seed", "id"])
    budgets = recipe.selection.budgets
    methods = ["base"] + [selection_label(m, b) for b in budgets for m in recipe.selection.methods]
    tables = []
    for b in budgets:
        base = [selection_label(m, b) for m in BASELINES if m in recipe.selection.methods]
        ms = ["base"] + [selection_label(m, b) for m in recipe.selection.methods]
        tables.append(compare_methods(items, ms, base).assign(budget=b))
    table = pd.concat(tables, ignore_index=True)
    baselines = [c.removeprefix("diff_vs_") for c in table.columns if c.startswith("diff_vs_")]
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "experiment.csv", index=False)
    plot_differences(table[table["method"] != "base"], baselines, out / "experiment.png")
    comp = composition_frame(selections).assign(seed=[s["seed"] for s in selections])
    comp.to_csv(out / "experiment-composition.csv", index=False)
    report = out / "experiment.md"
    report.write_text(experiment_report(recipe, table, comp, baselines, seed_runs, items, time.time() - started))
    create_markdown_artifact(
        inline_images(report.read_text(), out),
        key=artifact_key(recipe.name, "experiment-report"),
        description="BIDS vs baselines over seeds",
    )
    return {
        "report": str(report),
        "table": str(out / "experiment.csv"),
        "plot": str(out / "experiment.png"),
        "seeds": {str(s): r["report"] for s, r in seed_runs.items()},
        "methods": methods,
    }


def experiment_report(
    recipe: Recipe, table: pd.DataFrame, comp: pd.DataFrame, baselines: list[str], seed_runs: dict, items, seconds
) -> str:
    """Returns the experiment's markdown: headline table, every benchmark, composition, per-seed reports."""
    n_items = items[items["method"] == "base"].groupby("benchmark")["id"].nunique().to_dict()
    n_decoded = items[(items["method"] == "base") & items["score"].notna()].groupby("benchmark")["id"].nunique()
    lines = [
        f"# Experiment: {recipe.name}",
        "",
        f"Seeds {list(recipe.seeds)} (warmup data order, random selection, fine-tuning); data and scored items from "
        f"data seed {recipe.sampling_seed}. Differences are method minus baseline with paired-bootstrap 95% "
        "intervals (seeds and items resampled together); `score` is each benchmark's standard metric (higher is "
        "better), `nll` the gold-answer NLL (lower is better).",
        "",
        "Scored items per benchmark (gold NLL): "
        + ", ".join(f"{b} {n}" for b, n in sorted(n_items.items()))
        + ". With a standard metric (MC accuracy, or decoded for exact match / pass@1): "
        + ", ".join(f"{b} {int(n)}" for b, n in sorted(n_decoded.items()))
        + ".",
        "",
        "## Headline: macro-average and worst task",
        "",
        markdown_table(_headline(table, baselines)),
        "",
        "![differences](experiment.png)",
        "",
        "## Every benchmark",
        "",
        markdown_table(_rounded(table)),
        "",
        "## Composition per method (mean over seeds)",
        "",
        markdown_table(_composition(comp)),
        "",
        "## Per-seed runs",
        "",
        *[f"- seed {s}: `{r['report']}`" for s, r in seed_runs.items()],
        "",
        f"Wall time of this invocation (cached steps count their lookup only): {seconds / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def _headline(table: pd.DataFrame, baselines: list[str]) -> pd.DataFrame:
    t = table[table["benchmark"].isin([MACRO, WORST])].copy()
    for b in baselines:
        t[f"vs {b}"] = [
            ""
            if pd.isna(r[f"diff_vs_{b}"])
            else f"{r[f'diff_vs_{b}']:+.4f} [{r[f'lo_vs_{b}']:+.4f}, {r[f'hi_vs_{b}']:+.4f}] "
            f"{verdict(r, b, r['metric'] == 'score')}"
            for _, r in t.iterrows()
        ]
    t["mean"] = t["mean"].map(lambda v: f"{v:.4f}")
    return t[["metric", "benchmark", "method", "mean", *[f"vs {b}" for b in baselines]]]


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    t = table.drop(columns=["budget"], errors="ignore").copy()
    for c in t.columns:
        if t[c].dtype.kind == "f":
            t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{v:+.4f}" if "_vs_" in c else f"{v:.4f}")
    return t


def _composition(comp: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in comp.columns if c.startswith(("src:", "top:"))]
    return comp.groupby("selection", sort=True)[cols].mean().round(1).reset_index()
