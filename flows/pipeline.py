"""The whole BIDS pipeline, top to bottom, as subflows of cached steps.

data -> warmup LoRA -> gradient features -> influence -> for each method and
budget: selection -> fine-tuning -> evaluation (plus the base model) -> report.

`pipeline` runs every method and budget of the recipe. `reselect` runs one
method at one budget (the UI's "try another budget" button): the upstream
steps come back `Cached`, only selection, fine-tuning and evaluation compute,
and its report goes to a subfolder of the run's outputs.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import dask
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from bidsml.config import Recipe
from bidsml.markdown import artifact_key, inline_images, png_markdown, round_sig, run_tag
from bidsml.report import composition_frame, evaluation_frame, evaluation_pivot, plot_lineage, write_report
from bidsml.selection import selection_label
from bidsml.selectors import DEFAULT_METHOD, get_selector
from flows.experiment import run_experiment
from flows.naming import flow_run_name, task_run_name
from flows.params import DEFAULT_RECIPE_PATH, STEP_NAMES, MethodName, StepName, resolve_recipe
from flows.preflight import preflight
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
from storage.lineage import mermaid, run_lineage
from storage.names import BUILD_INFO
from storage.names import DIAGNOSTICS_PLOT as PLOT
from storage.refs import ArtifactRef, built_before
from storage.runs import save_run_record
from storage.selections import subset_path
from tasks.execution import (
    cluster,
    dask_runner,
    gpu_resources,
    note_code_at_start,
    pin_worker_gpu,
    reporting_lost_scheduler,
)

STEPS = STEP_NAMES


def output_dir(recipe: Recipe) -> Path:
    """Returns the folder with the run's human-facing outputs (report, tables, plots)."""
    return Path(recipe.run_root).resolve() / recipe.name


def _check_refresh(refresh: list[str] | None) -> set[str]:
    out = set(refresh or [])
    unknown = out - set(STEPS)
    if unknown:
        raise ValueError(f"unknown step(s) in refresh: {sorted(unknown)}; steps are {', '.join(STEPS)}")
    return out


def run_steps(recipe: Recipe, refresh: set[str], out: Path, title: str, kind: str = "pipeline") -> dict:
    """Runs every step for the recipe's methods and budgets, writes the report and run record; returns paths.

    With `execution.task_runner: dask` one cluster serves the whole run (feature shards, branches).
    """
    preflight(recipe)
    with cluster(recipe):
        return _run_steps(recipe, refresh, out, title, kind)


def log_step(name: str, ref: ArtifactRef, seconds: float, since: float) -> None:
    """Logs a step's one-line summary to the run log (the UI's Logs tab): computed or cached, time, key figures."""
    built = ref.meta.get(BUILD_INFO) or {}
    status = (
        f"cached (built in {built.get('seconds', 0):.1f} s)"
        if built_before(ref, since)
        else f"computed in {seconds:.1f} s"
    )
    figures = {k: v for k, v in ref.meta.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    macro = next((r for r in ref.meta.get("tasks", []) if r.get("name") == "macro-average"), None)
    if macro:
        figures |= {"macro score": macro["score"], "macro nll": macro["nll"]}
    text = ", ".join(f"{k} {round_sig(v)}" for k, v in list(figures.items())[:6])
    get_run_logger().info(f"{name}: {ref.kind} {ref.digest[:10]} {status}" + (f"; {text}" if text else ""))


def step_table(refs: dict[str, ArtifactRef], timings: dict[str, float], since: float) -> list[dict]:
    """Returns one row per step of a run: cached or computed, its time in this run and its original build time."""
    rows = []
    for label, ref in refs.items():
        built = ref.meta.get(BUILD_INFO) or {}
        cached = built_before(ref, since)
        rows.append(
            {
                "step": label,
                "status": "cached" if cached else "computed",
                "this run (s)": round(timings.get(label, 0.0), 1),
                "build (s)": round(built.get("seconds", timings.get(label, 0.0)), 1),
                "built at": time.strftime("%Y-%m-%d %H:%M", time.localtime(built.get("finished_at", since))),
                # featurization on a cluster: chunks per worker, and the driver's (0 when the cluster did its job)
                "computed by": ", ".join(f"{k}: {v}" for k, v in (ref.meta.get("chunks_by") or {}).items()),
            }
        )
    return rows


def _run_steps(recipe: Recipe, refresh: set[str], out: Path, title: str, kind: str) -> dict:
    timings: dict[str, float] = {}
    since = time.time()

    def timed(name, fn, *args, **kw):
        t = time.time()
        result = fn(*args, refresh=name.split(":")[0] in refresh, **kw)
        timings[name] = time.time() - t
        log_step(name, result, timings[name], t)
        return result

    data = timed("data", data_flow, recipe)
    warm = timed("warmup", warmup_flow, recipe, data=data)
    feats = timed("features", features_flow, recipe, data=data, warm=warm)
    infl = timed("influence", influence_flow, recipe, data=data, warm=warm, feats=feats)
    diag = timed("diagnose", diagnose_flow, recipe, infl=infl, data=data, warm=warm)
    needs_reps = any("representations" in get_selector(m).needs for m in recipe.selection.methods)
    reps = timed("represent", represent_flow, recipe, data=data) if needs_reps else None
    evals = [timed("evaluate:base", evaluate_flow, recipe, data=data)]
    pairs = [(m, b) for m in recipe.selection.methods for b in recipe.selection.budgets]
    if recipe.execution.task_runner == "dask":  # every method x budget branch at once, one per worker
        with cluster(recipe) as address, reporting_lost_scheduler(recipe, "the method x budget branches"):
            results = branches_flow.with_options(task_runner=dask_runner(address))(
                recipe, pairs, data, infl, reps, sorted(refresh)
            )
    else:
        results = [branch.fn(recipe, m, b, data, infl, reps, sorted(refresh)) for m, b in pairs]
    selections, adapters = [], []
    for sel, ft, ev, times in results:
        selections.append(sel)
        adapters.append(ft)
        evals.append(ev)
        timings.update(times)

    subsets = {selection_label(s.meta["method"], s.meta["budget"]): str(subset_path(s.path)) for s in selections}
    by_step = {"data": data, "warmup": warm, "features": feats, "influence": infl, "diagnose": diag}
    by_step |= {"represent": reps} if reps is not None else {}
    by_step["evaluate:base"] = evals[0]
    for sel, ft, ev in zip(selections, adapters, evals[1:]):
        tag = selection_label(sel.meta["method"], sel.meta["budget"])
        by_step |= {f"select:{tag}": sel, f"finetune:{tag}": ft, f"evaluate:{tag}": ev}
    steps = step_table(by_step, timings, since)
    report = write_report(
        out,
        title,
        data.meta,
        [e.meta for e in evals],
        [s.meta for s in selections],
        subsets,
        steps,
        {
            "task_stats": diag.meta["task_stats"],
            "plot": diag.path / PLOT,
            "fidelity": diag.meta.get("fidelity"),
            "fidelity_warnings": diag.meta.get("fidelity_warnings", []),
            "proj_dim": recipe.features.proj_dim,
        },
    )
    run_id = str(flow_run.get_id() or f"local-{int(time.time())}")
    if run_tag(recipe):  # one record per seed of a repeated run (they share the flow run)
        run_id += "-" + artifact_key(run_tag(recipe))
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
    run_root = Path(recipe.run_root).resolve()
    record = save_run_record(
        run_root,
        run_id,
        recipe.model_dump(mode="json"),
        refs,
        {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "report": str(report), "timings": timings, "steps": steps},
    )
    records = run_lineage(run_root, [diag, *evals])
    graph = mermaid(records)
    (out / "lineage.mmd").write_text(graph + "\n")
    plot_lineage(records, out / "lineage.png")
    # keys: one card per thing and per run kind (a `select` run's report is not the pipeline's)
    prefix = artifact_key(recipe.name, kind, run_tag(recipe))
    _post_run_artifacts(report, evals, selections, graph, out / "lineage.png", run_id, prefix)
    return {
        "refs": refs,
        "run_id": run_id,
        "report": str(report),
        "outputs": str(out),
        "subsets": subsets,
        "record": str(record),
        "evaluation": str(out / "evaluation.csv"),
        "lineage": str(out / "lineage.mmd"),
    }


@task(name="branch", task_run_name=task_run_name("branch"))
def branch(
    recipe: Recipe, method: str, budget: float, data, infl, reps, refresh: list[str]
) -> tuple[ArtifactRef, ArtifactRef, ArtifactRef, dict[str, float]]:
    """Runs one method x budget branch: select -> finetune -> evaluate; returns their refs and wall times."""
    tag = selection_label(method, budget)
    times: dict[str, float] = {}
    pin_worker_gpu()  # on a Dask worker: its own GPU
    note_code_at_start()  # a later run's preflight can tell this worker runs stale code

    def timed(name, fn, *args, **kw):
        t = time.time()
        # parameters are already typed objects; on a Dask worker pydantic cannot rebuild the flows' forward refs
        out = fn.with_options(validate_parameters=False)(*args, refresh=name in refresh, **kw)
        times[f"{name}:{tag}"] = time.time() - t
        log_step(f"{name}:{tag}", out, times[f"{name}:{tag}"], t)
        return out

    sel = timed("select", select_flow, recipe, method, budget, data=data, infl=infl, reps=reps)
    ft = timed("finetune", finetune_flow, recipe, selection=sel)
    ev = timed("evaluate", evaluate_flow, recipe, data=data, adapter=ft)
    return sel, ft, ev, times


@flow(name="branches", flow_run_name="method x budget branches on Dask", log_prints=True)
def branches_flow(recipe: Recipe, pairs: list[tuple[str, float]], data, infl, reps, refresh: list[str]) -> list:
    """Submits every method x budget branch to the flow's task runner at once; returns their results in order."""
    submit = branch.with_options(retries=recipe.execution.retries)
    with dask.annotate(resources=gpu_resources(recipe)) if gpu_resources(recipe) else contextlib.nullcontext():
        futures = [submit.submit(recipe, m, b, data, infl, reps, refresh) for m, b in pairs]
    return [f.result() for f in futures]


def _post_run_artifacts(
    report: Path, evals: list, selections: list, graph: str, lineage_png: Path, run_id: str, prefix: str
) -> None:
    """Posts the run's report (plots inline), evaluation and composition tables and lineage graph to the UI."""
    create_markdown_artifact(
        inline_images(report.read_text(), report.parent), key=f"{prefix}-report", description=f"run report ({prefix})"
    )
    ev = evaluation_pivot(evaluation_frame([e.meta for e in evals]))
    create_table_artifact(_readable(ev), key=f"{prefix}-evaluation", description="evaluation: score / gold NLL")
    comp = composition_frame([s.meta for s in selections])
    create_table_artifact(_readable(comp), key=f"{prefix}-composition", description="selection composition")
    create_markdown_artifact(
        "\n".join(
            [
                "### Lineage of this run's artifacts",
                "",
                f"Every node is an artifact (step, kind, content digest); `bidsflow lineage {run_id[:8]}` prints "
                "the same graph with parameters and paths.",
                "",
                png_markdown(lineage_png, "lineage"),
                "",
                "Mermaid source (drawn by Prefect's V2 UI and by markdown viewers that render mermaid):",
                "",
                "```mermaid",
                graph,
                "```",
            ]
        ),
        key=f"{prefix}-lineage",
        description="artifact lineage (image and mermaid)",
    )


def _readable(df) -> list[dict]:
    """Returns table rows for the UI: floats to 4 significant digits, no index column."""
    return [{k: round_sig(v) if isinstance(v, float) else v for k, v in row.items()} for row in df.to_dict("records")]


@flow(name="bids-pipeline", flow_run_name=flow_run_name("pipeline"), log_prints=True)
def pipeline(
    recipe: Recipe | None = None, refresh: list[StepName] | None = None, recipe_path: str = DEFAULT_RECIPE_PATH
) -> dict:
    """Runs every step (cached) and writes the report; returns the run's refs and output paths.

    Args:
        recipe: The run's settings: model, data, LoRA, warmup, features, methods and budgets, fine-tuning,
            evaluation, execution. A recipe with `seeds` runs once per seed and compares the methods. Empty: the
            file `recipe_path` names.
        refresh: Steps to recompute even when their artifacts are cached (normally none).
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty: what a
            scheduled run of a deployment runs.
    """
    recipe = resolve_recipe(recipe, recipe_path)
    if recipe.seeds:  # repeats over seeds, then the paired comparison
        return run_experiment(recipe, _check_refresh(refresh), output_dir(recipe), run_steps)
    out = run_steps(recipe, _check_refresh(refresh), output_dir(recipe), f"BIDS run: {recipe.name}")
    out.pop("refs")
    return out


@flow(name="select-finetune-evaluate", flow_run_name=flow_run_name("select-finetune-evaluate"), log_prints=True)
def reselect(
    recipe: Recipe | None = None,
    method: MethodName = DEFAULT_METHOD,
    budget: float = 0.1,
    refresh: list[StepName] | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
) -> dict:
    """Selects with one method at one budget, fine-tunes and evaluates; upstream steps come from the cache.

    Args:
        recipe: The run's settings (data, model, features: the cached upstream); its own methods and budgets
            are replaced by the two fields below. Empty: the file `recipe_path` names.
        method: Selection method (a registered selector: random, less, bids, ...).
        budget: How much to select: a count (>= 1) or a fraction of the pool (< 1).
        refresh: Steps to recompute even when their artifacts are cached (normally none).
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
    """
    recipe = resolve_recipe(recipe, recipe_path)
    one = recipe.with_overrides({"selection.methods": [method], "selection.budgets": [budget]})
    label = selection_label(method, budget)
    out = run_steps(
        one, _check_refresh(refresh), output_dir(recipe) / label, f"BIDS {label}: {recipe.name}", f"select {label}"
    )
    out.pop("refs")
    return out
