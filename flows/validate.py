"""`validate`: does influence work on my data? The counterfactual check of a finished run (bidsml/validate.py).

For every target task, probe models (step `probe`) are fine-tuned exactly as
the run does on the top-k, bottom-k and k random pool rows by the task's
influence, and on a base subset with its top-k or k random rows removed; the
gold NLL of the task's scored items tells whether influence predicted what
helps. Every probe is a cached artifact: a killed validate resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from bidsml.config import Recipe
from bidsml.errors import ArtifactError, SelectionError
from bidsml.report.markdown import artifact_key
from bidsml.report.validate import write_validation
from bidsml.selection import resolve_budget
from bidsml.influence.streamed import row_scores
from bidsml.validate import SHARED_ARMS, probe_label, task_table
from bidsml.validate import lds as lds_score
from flows.naming import flow_run_name
from flows.runner import map_on_runner
from flows.step_flows import STEP_FLOWS
from flows.ui import post_report, readable
from storage.evaluations import load_evaluation_items
from storage.influence_store import influence_matrix_array, load_influence_tables
from storage.refs import check_ref
from storage.runs import load_run, run_ref

VALIDATE_DIR = "validate"  # in the run's outputs folder
DEFAULT_SEEDS = 3
BASE_FACTOR = 4  # the removal arms' base subset: BASE_FACTOR x k rows of the pool (at most all of it)


def probe(recipe: Recipe, data, infl, params: dict):
    """Builds (or reads from the cache) one probe model; a part of `map_on_runner`."""
    return STEP_FLOWS["probe"](recipe, inputs={"data": data, "influence": infl}, params=params)


def plan_probes(tasks: list[str], k: int, seeds: int, base: int, n_lds: int) -> list[dict]:
    """Returns every probe's parameters: per seed, per task top, bottom and remove-top, and the shared random arms."""
    out = []
    for s in range(seeds):
        for t in tasks:
            out += [{"arm": arm, "task": t, "k": k, "seed": s, "base": base} for arm in ("top", "bottom", "remove-top")]
        out += [{"arm": arm, "task": "", "k": k, "seed": s, "base": base} for arm in ("random", "remove-random")]
    out += [{"arm": "half", "task": "", "k": k, "seed": s, "base": base} for s in range(n_lds)]
    assert all(p["task"] == "" for p in out if p["arm"] in SHARED_ARMS)
    return out


def probe_settings(recipe: Recipe, k: int) -> tuple[Recipe, pd.DataFrame | None]:
    """Returns the recipe the probes train with: fine-tuning lr and epochs chosen for k rows (the recipe's tuning
    grid, each trial a cached `tune` step on k random rows, scored by validation NLL) and the trials; the run's
    settings and None without a tuning grid or with `probes.tune` off."""
    from flows.experiment import choose_finetune

    t = recipe.tuning
    if not recipe.probes.tune or t is None or not (t.lrs or t.epochs):
        return recipe, None
    at_k = recipe.model_copy(update={"tuning": t.model_copy(update={"budget": float(k)})})
    chosen, table = choose_finetune(at_k)
    return chosen.model_copy(update={"tuning": t}), table


def check_request(recipe: Recipe, record: dict, k: int | None, seeds: int, n_lds: int) -> tuple:
    """Returns (data, influence, targets, n, k, base) after checking the run and the options; errors name them."""
    from tasks.probe import scored_items

    data, infl = run_ref(record, "data"), run_ref(record, "influence")
    for ref in (data, infl):
        try:
            check_ref(ref)
        except (ArtifactError, FileNotFoundError) as err:
            raise ArtifactError(
                f"run {record['run_id']}: its {ref.kind} artifact is missing or changed ({err}); rerun the pipeline"
            ) from err
    train, val = load_influence_tables(infl.path)
    n = len(train)
    k = resolve_budget(recipe.selection.budgets[0], n) if k is None else k
    if not 1 <= k < n:
        raise SelectionError(f"--k {k}: must be within 1..{n - 1} (the run's pool has {n} rows)")
    if seeds < 2:
        raise SelectionError(f"--seeds {seeds}: the random arms need at least 2 seeds")
    if n_lds and n_lds < 3:
        raise SelectionError(f"--lds {n_lds}: the linear datamodeling score needs at least 3 models (0: skip)")
    base = min(n, BASE_FACTOR * k)
    if base <= k:
        raise SelectionError(f"--k {k}: the removal arms need a base subset larger than k; the pool has {n} rows")
    tasks = sorted(set(val["task"]))
    have = {it.benchmark for it in scored_items(recipe)}
    missing = [t for t in tasks if t not in have]
    if missing:
        raise SelectionError(
            f"run {record['run_id']}: targets {missing} have no scored items; add them to evaluation.benchmarks "
            "(validate scores each target's own items, never its validation examples)"
        )
    return data, infl, tasks, n, k, base


def item_nll(ref) -> pd.Series:
    """Returns a probe's gold NLL per scored item, indexed by (task, item id)."""
    return load_evaluation_items(ref).set_index(["task", "id"])["nll"]


def lds_result(probes: dict, infl, tasks: list[str], n_lds: int) -> dict:
    """Returns the LDS over the `half` probes: predicted loss = minus the summed task-mean influence of their rows."""
    import numpy as np

    from tasks.probe import ROWS_FILE

    _, val = load_influence_tables(infl.path)
    src = influence_matrix_array(infl.path)
    cols = {t: (val["task"] == t).to_numpy() for t in tasks}
    means = {t: row_scores(src, lambda block, c=c: block[:, c].mean(1)) for t, c in cols.items()}
    labels = [probe_label("half", "", s) for s in range(n_lds)]
    nll = pd.concat([item_nll(probes[lab]) for lab in labels], axis=1).dropna()
    pred = np.stack(
        [
            [-means[t][json.loads((probes[lab].path / ROWS_FILE).read_text())].sum() for t, _ in nll.index]
            for lab in labels
        ]
    )
    score, lo, hi = lds_score(pred, nll.to_numpy().T)
    return {"lds": score, "lds_lo": lo, "lds_hi": hi, "lds_models": n_lds, "lds_queries": len(nll)}


@flow(name="validate", flow_run_name=flow_run_name("validate"), log_prints=True)
def validate(
    run: str = "latest",
    k: int | None = None,
    seeds: int = DEFAULT_SEEDS,
    lds: int = 0,
    run_root: str = "runs",
) -> dict:
    """Checks a finished run's influence: does training on the top-k rows for a task lower its held-out loss?

    Args:
        run: the run to check: 'latest' or a run id (prefix), from `run_root`'s run records.
        k: rows per subset (and rows removed); default: the run's first selection budget.
        seeds: seeds of the random arms (each a fine-tune shared by every task).
        lds: also train this many models on random halves of the pool and report the linear datamodeling score
            (0: skip).
        run_root: the folder holding the run's artifacts and records.
    """
    t0 = time.time()
    log = get_run_logger()
    record = load_run(Path(run_root).resolve(), run)
    recipe = Recipe.model_validate(record["recipe"]).with_overrides({"run_root": str(Path(run_root).resolve())})
    data, infl, tasks, n, k, base = check_request(recipe, record, k, seeds, lds)
    recipe, tuning = probe_settings(recipe, k)
    params = plan_probes(tasks, k, seeds, base, lds)
    log.info(
        f"validate run {record['run_id']}: {len(params)} probe models (k = {k} of {n} pool rows, removal base "
        f"{base} rows, {seeds} random seeds, {lds} LDS models) for tasks {', '.join(tasks)}"
    )
    refs = map_on_runner(
        recipe,
        probe,
        [(recipe, data, infl, p) for p in params],
        [f"probe {probe_label(p['arm'], p['task'], p['seed'])}" for p in params],
        "validate probes",
        gpu=True,
    )
    probes = {probe_label(p["arm"], p["task"], p["seed"]): ref for p, ref in zip(params, refs)}
    rows = task_table(
        {lab: item_nll(ref) for lab, ref in probes.items()}, tasks, list(range(seeds)), recipe.probes.min_items
    )
    result = {
        "run": record["run_id"],
        "k": k,
        "min_items": recipe.probes.min_items,
        "probe_lr": recipe.finetune.lr,
        "probe_epochs": recipe.finetune.epochs,
        "probe_settings": "chosen for k rows by the recipe's tuning grid" if tuning is not None else "the run's",
        "n_pool": n,
        "removal_base": base,
        "seeds": seeds,
        "tasks": rows,
        **(lds_result(probes, infl, tasks, lds) if lds else {}),
    }
    proj = record["refs"].get("projection", {}).get("main", {}).get("meta", {})
    result |= {"chosen_k": proj.get("k"), "worst_task_fidelity": proj.get("worst_task_fidelity")}
    result["seconds"] = round(time.time() - t0, 1)
    out = write_outputs(recipe, record, result)
    result["outputs"] = str(out)
    for r in rows:
        log.info(
            f"{r['task']}: top - random {r['top_minus_random_nll']:+.4f} [{r['top_minus_random_nll_lo']:+.4f}, "
            f"{r['top_minus_random_nll_hi']:+.4f}], bottom - random {r['bottom_minus_random_nll']:+.4f}, removal "
            f"{r['removal_top_minus_random_nll']:+.4f}: {r['verdict']}"
        )
    return result


def write_outputs(recipe: Recipe, record: dict, result: dict) -> Path:
    """Writes validate.json / .csv / .md / .png in the run's outputs, the section in its report, and UI cards."""
    from flows.pipeline import output_dir

    out = output_dir(recipe) / VALIDATE_DIR
    report = Path(record.get("report") or output_dir(recipe) / "report.md")
    section = write_validation(out, result, report)
    key = artifact_key(recipe.name, "validate")
    post_report(section, f"{key}-report", "influence check")
    create_table_artifact(
        readable(result["tasks"]), key=f"{key}-table", description="influence check: gold NLL differences per task"
    )
    return out
