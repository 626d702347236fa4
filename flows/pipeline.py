"""The whole BIDS pipeline, top to bottom, as subflows of cached steps.

data -> warmup LoRA -> gradient features -> influence -> for each method and
budget: selection -> fine-tuning -> evaluation (plus the base model) -> report.

`pipeline` runs every method and budget of the recipe. `reselect` runs one
method at one budget (the UI's "try another budget" button): the upstream
steps come back `Cached`, only selection, fine-tuning and evaluation compute,
and its report goes to a subfolder of the run's outputs.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from bidsml.config import Recipe
from bidsml.report.markdown import artifact_key, round_sig, run_tag
from bidsml.report.run import plot_lineage, write_report
from bidsml.selection import selection_label
from bidsml.selectors import DEFAULT_METHOD
from flows.execution import cluster
from flows.experiment import run_experiment
from flows.naming import flow_run_name
from flows.params import DEFAULT_RECIPE_PATH, MethodName, StepName, resolve_recipe
from flows.preflight import preflight
from flows.runner import map_on_runner
from flows.step_flows import STEP_FLOWS
from flows.ui import post_run_cards
from tasks.registry import STEPS
from tasks.step import Step
from storage.evaluations import load_evaluation_items
from storage.lineage import mermaid, run_lineage
from storage.models import pruned_model_config
from storage.names import BUILD_INFO
from storage.refs import ArtifactRef, built_before
from storage.runs import MAIN, save_run_record
from storage.selections import subset_path


def output_dir(recipe: Recipe) -> Path:
    """Returns the folder with the run's human-facing outputs (report, tables, plots)."""
    return Path(recipe.run_root).resolve() / recipe.name


def _check_refresh(refresh: list[str] | None) -> set[str]:
    out = set(refresh or [])
    unknown = out - set(STEPS)
    if unknown:
        raise ValueError(f"unknown step(s) in refresh: {sorted(unknown)}; steps are {', '.join(STEPS)}")
    return out


def run_steps(
    recipe: Recipe, refresh: set[str], out: Path, title: str, kind: str = "pipeline", front: Recipe | None = None
) -> dict:
    """Runs every step for the recipe's methods and budgets, writes the report and run record; returns paths.

    With `execution.task_runner: dask` one cluster serves the whole run (feature shards, branches). `front`: the
    recipe the once-per-run steps (data, warmup, features, influence, ...) are built with, when it is not `recipe`
    (an experiment's seeds sharing the first seed's influence); selection, fine-tuning and evaluation use `recipe`.
    """
    preflight(recipe)
    with cluster(recipe):
        return _run_steps(recipe, refresh, out, title, kind, front or recipe)


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
                "of which": ref.meta.get("time_note", ""),  # a part of the build a step names (the fidelity check)
                "from": ref.meta.get("pinned_from", "") or _reused(ref),  # a kept warmup; rows copied
            }
        )
    return rows


def _reused(ref: ArtifactRef) -> str:
    """Returns "N rows copied from <artifact>" for a features or influence artifact that reused earlier rows."""
    n = ref.meta.get("rows_reused")
    if not n:
        return ""
    src = ref.meta.get("reused_from")
    names = src["sources"] if isinstance(src, dict) else [src]
    return f"{n} rows copied from {', '.join(str(x)[:12] for x in names)}"


ON_THE_ORIGINAL = ("data", "prune", "degradation")  # steps that read the unpruned model (a recipe with `prune`)


def pinned_warmup(recipe: Recipe) -> ArtifactRef:
    """Returns the warmup artifact of run `warmup.from_run` (its LoRA checkpoints and Adam states), checked to fit
    this recipe's model and LoRA; its meta says where it came from (the run and the pool it was trained on)."""
    import json

    from bidsml.errors import ArtifactError, RecipeError
    from storage.identity import model_identity
    from storage.runs import load_run, run_ref

    run_root = Path(recipe.run_root)
    try:
        record = load_run(run_root, recipe.warmup.from_run)
        ref = run_ref(record, "warmup")
    except (FileNotFoundError, ArtifactError) as err:
        raise RecipeError(f"warmup.from_run: {err}") from None
    sections = json.loads((ref.path / "meta.json").read_text())["inputs"]["sections"]
    mine = {"lora": recipe.lora.model_dump(mode="json"), "model": model_identity(recipe.model)}
    for name, value in mine.items():
        if sections.get(name) != value:
            raise RecipeError(
                f"warmup.from_run: run {record['run_id']}'s warmup was trained with another {name} section "
                f"({sections.get(name)}); this recipe has {value}"
            )
    pool = json.loads((ref.path / "meta.json").read_text())["inputs"]["inputs"]["data"]
    note = f"kept from run {record['run_id']} (pool {pool[:12]})"
    return ref.model_copy(update={"meta": {**ref.meta, "pinned_from": note}})


def per_run_steps(recipe: Recipe) -> list[Step]:
    """Returns the steps a run builds once (in pipeline order), without those no method of the recipe needs."""
    return [s for s in STEPS.values() if s.per == "run" and (s.run_if is None or s.run_if(recipe))]


def branch_steps() -> list[Step]:
    """Returns the steps of every method x budget branch, in pipeline order (selection -> finetune -> evaluation)."""
    return [s for s in STEPS.values() if s.per == "branch"]


def base_steps() -> list[Step]:
    """Returns the branch steps a run also builds once without the branch (evaluation: the base model): those
    whose artifact from the branch is an optional input (a `loop` input is a round's, not the branch's)."""
    chain = {s.name for s in branch_steps()}
    return [
        s
        for s in branch_steps()
        if any(i.optional and i.kind in chain for i in s.inputs if not i.loop)
        and all(i.optional for i in s.inputs if i.kind in chain and not i.loop)
    ]


def run_inputs(step: Step, refs: dict[str, ArtifactRef | None]) -> dict[str, ArtifactRef | None]:
    """Returns the step's inputs from `refs` (kind -> this run's or this branch's artifact)."""
    return {i.key: refs.get(i.kind) for i in step.inputs}


def _run_steps(recipe: Recipe, refresh: set[str], out: Path, title: str, kind: str, front: Recipe) -> dict:
    """A run: every step's artifact, then what people read of it."""
    since = time.time()
    refs, timings, recipe = _build_steps(recipe, refresh, front, since)
    return _write_run(recipe, refs, timings, since, out, title, kind)


def _build_steps(
    recipe: Recipe, refresh: set[str], front: Recipe, since: float
) -> tuple[dict[str, dict[str, ArtifactRef]], dict[str, float], Recipe]:
    """Runs the per-run steps in dependency order, the base model's evaluation, then every method x budget branch;
    returns (artifact refs by step and label, each step's seconds, the recipe the branches ran: on the pruned
    model when the recipe prunes)."""
    timings: dict[str, float] = {}
    refs: dict[str, dict[str, ArtifactRef]] = {}

    def timed(name: str, label: str, rec: Recipe | None = None, **kw) -> ArtifactRef:
        t = time.time()
        result = STEP_FLOWS[name](rec or recipe, refresh=name in refresh, **kw)  # `recipe` as it is now (pruned)
        key = name if label == MAIN else f"{name}:{label}"
        timings[key] = time.time() - t
        log_step(key, result, timings[key], t)
        refs.setdefault(name, {})[label] = result
        return result

    original = front  # with a `prune` section, the steps after `prune` run on the pruned model; these two do not
    for step in per_run_steps(recipe):  # data, prune, warmup, features, influence, ... in dependency order
        rec = original if step.name in ON_THE_ORIGINAL else front
        if step.name == "warmup" and rec.warmup.from_run:  # a kept warmup: another run's, for this pool
            refs["warmup"] = {MAIN: pinned_warmup(rec)}
            log_step("warmup", refs["warmup"][MAIN], 0.0, since)
            continue
        timed(step.name, MAIN, rec, inputs=run_inputs(step, {k: by[MAIN] for k, by in refs.items()}))
        if step.name == "prune":
            pruned = pruned_model_config(front.model, refs["prune"][MAIN])
            front, recipe = (r.model_copy(update={"model": pruned}) for r in (front, recipe))
    upstream = {k: by[MAIN] for k, by in refs.items()}  # what each branch reads
    for step in base_steps():  # the base model's evaluation: the model fine-tunes start from (the pruned one, if any)
        inputs = run_inputs(step, upstream)
        timed(step.name, step.label_of(inputs, None) or MAIN, inputs=inputs)
        if "prune" in refs:  # and the unpruned model: what recovery aims at
            timed(step.name, "original", original, inputs=inputs)
    pairs = [(m, b) for m in recipe.selection.methods for b in recipe.selection.budgets]
    results = map_on_runner(
        recipe,
        branch,
        [(recipe, m, b, upstream, sorted(refresh)) for m, b in pairs],
        [f"branch {selection_label(m, b)}" for m, b in pairs],
        "method x budget branches",
        gpu=True,
    )
    for branch_refs, times in results:
        timings.update(times)
        for name, (label, ref) in branch_refs.items():
            refs.setdefault(name, {})[label] = ref
            log_step(f"{name}:{label}", ref, timings.get(f"{name}:{label}", 0.0), since)
    return refs, timings, recipe


def _write_run(
    recipe: Recipe,
    refs: dict[str, dict[str, ArtifactRef]],
    timings: dict[str, float],
    since: float,
    out: Path,
    title: str,
    kind: str,
) -> dict:
    """Writes what people read of a run: the report (with the recovery section when the recipe prunes), the run
    record, the lineage graph and its picture, the UI's cards; returns the run's refs and output paths."""
    selections = list(refs["selection"].values())
    evals = [
        e if label != "original" else e.model_copy(update={"meta": {**e.meta, "model": "original (unpruned)"}})
        for label, e in refs["evaluation"].items()
    ]
    diag = refs["diagnostics"][MAIN]
    subsets = {label: str(subset_path(s.path)) for label, s in refs["selection"].items()}
    by_step = {
        name if label == MAIN else f"{name}:{label}": ref for name, by in refs.items() for label, ref in by.items()
    }
    steps = step_table(by_step, timings, since)
    facts = {k: v for s in per_run_steps(recipe) if s.report for k, v in s.report(refs[s.name][MAIN]).items()}
    report = write_report(out, title, facts, [e.meta for e in evals], [s.meta for s in selections], subsets, steps)
    if "prune" in refs:  # what pruning cost and what each of this run's arms won back
        append_recovery(recipe, refs, report)
    run_id = str(flow_run.get_id() or f"local-{int(time.time())}")
    if run_tag(recipe):  # one record per seed of a repeated run (they share the flow run)
        run_id += "-" + artifact_key(run_tag(recipe))
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
    post_run_cards(report, evals, selections, graph, out / "lineage.png", run_id, prefix)
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


def append_recovery(recipe: Recipe, refs: dict, report: Path) -> None:
    """Adds the recovery section to a run's report (bidsml.report.recovery.append_recovery_section): the original
    and the pruned model, and each fine-tune of this run (one seed)."""
    import pandas as pd

    from bidsml.report.recovery import append_recovery_section

    evals = refs["evaluation"]
    items = pd.concat(
        [
            load_evaluation_items(ref).assign(method=label, seed=None if label in ("base", "original") else 0)
            for label, ref in evals.items()
        ],
        ignore_index=True,
    )
    arms = [label for label in evals if label not in ("base", "original")]
    sels = [s.meta for s in refs["selection"].values()]
    append_recovery_section(report, items, arms, recipe.prune, sels)


def branch(
    recipe: Recipe, method: str, budget: float, upstream: dict[str, ArtifactRef], refresh: list[str]
) -> tuple[dict[str, tuple[str, ArtifactRef]], dict[str, float]]:
    """Runs one method x budget branch: its steps in order (selection -> finetune -> evaluation), each on the run's
    artifacts and the branch's; returns {step: (label, ref)} and times.

    A multi-round step (kmq-iterative's selection) runs its rounds here: before round r > 0, the steps its `loop`
    inputs name (the fine-tune) are built on round r - 1's artifact. A part of `map_on_runner`: a task on the run's
    task runner (this process, or a Dask worker).
    """
    tag = selection_label(method, budget)
    choice = {"method": method, "budget": budget, "options": recipe.selection.options_of(method)}
    refs: dict[str, ArtifactRef | None] = dict(upstream)
    times: dict[str, float] = {}
    out: dict[str, tuple[str, ArtifactRef]] = {}

    def timed(step: Step, params: dict | None) -> None:
        t = time.time()
        ref = STEP_FLOWS[step.name](recipe, refresh=step.name in refresh, inputs=run_inputs(step, refs), params=params)
        times[f"{step.name}:{tag}"] = time.time() - t
        out[step.name] = (tag, ref)
        refs[step.name] = ref

    for step in branch_steps():
        params = choice if step.params is not None else None  # the branch's method and budget: its selection's
        timed(step, params)
        for r in range(1, step.rounds_of(step.params(**params)) if params else 1):  # kmq-iterative's later rounds
            for kind in [i.kind for i in step.inputs if i.loop and i.kind != step.name]:
                timed(STEPS[kind], None)  # the fine-tune on the rows so far
            timed(step, {**params, "round": r})
    return out, times


@flow(name="bids-pipeline", flow_run_name=flow_run_name("pipeline"), log_prints=True)
def pipeline(
    recipe: Recipe | None = None,
    refresh: list[StepName] | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    shared_influence: bool = False,
) -> dict:
    """Runs every step (cached) and writes the report; returns the run's refs and output paths.

    Args:
        recipe: The run's settings: model, data, LoRA, warmup, features, methods and budgets, fine-tuning,
            evaluation, execution. A recipe with `seeds` runs once per seed and compares the methods. Empty: the
            file `recipe_path` names.
        refresh: Steps to recompute even when their artifacts are cached (normally none).
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty: what a
            scheduled run of a deployment runs.
        shared_influence: With `seeds`: build the warmup, features and influence once (the first seed's) and
            vary only random selection and fine-tuning over the seeds (the influence selectors then pick the same
            rows in every seed; the intervals leave out warmup variance). Cheaper by a pass per seed.
    """
    recipe = resolve_recipe(recipe, recipe_path)
    if recipe.seeds:  # repeats over seeds, then the paired comparison
        return run_experiment(recipe, _check_refresh(refresh), output_dir(recipe), run_steps, shared_influence)
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
