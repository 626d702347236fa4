"""One flow per step, each rerunnable on its own from existing artifacts.

Each flow takes the recipe (a typed pydantic parameter: a form in the UI),
its own parameters, and optionally the refs of its inputs. Refs left unset
are read from a run record (`from_run`, default the latest run under the
recipe's run root), so a step launched from the UI or `bidsflow step` only
needs the recipe. The pipeline calls them as subflows with explicit refs.

Every step task runs as a Prefect materializing task: its artifact is an
asset (``file://`` + the artifact folder) with its input artifacts as
upstream assets, so Prefect records materialization events with lineage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.assets import Asset, AssetProperties
from prefect.tasks import MaterializingTask

from bidsml.config import Recipe
from bidsml.errors import ArtifactError
from bidsml.selectors import DEFAULT_METHOD, get_selector
from flows.naming import flow_run_name, task_run_name
from flows.params import DEFAULT_RECIPE_PATH, MethodName, resolve_recipe
from flows.preflight import preflight
from storage.names import BUILD_INFO, PREFECT_RESULTS_DIR
from storage.refs import ArtifactRef, built_before
from storage.runs import load_run
from tasks.data import prepare_data
from tasks.diagnose import diagnose
from tasks.evaluate import evaluate
from tasks.execution import torch_threads
from tasks.features import featurize
from tasks.finetune import finetune
from tasks.influence import compute_influence
from tasks.represent import represent
from tasks.select import select_subset
from tasks.warmup import warmup

CACHED_SUFFIX = " · cached"


def asset_key(path: Path | str) -> str:
    """Returns the Prefect asset key of an artifact folder."""
    return "file://" + str(Path(path).resolve()).replace(" ", "%20")


def _asset_task(task, recipe: Recipe, args: tuple) -> MaterializingTask | None:
    """Returns `task` as a materializing task for the artifact its call will produce (None if unknown)."""
    try:
        plan = task.cache_policy.plan(recipe, *args)
    except ArtifactError as err:  # a missing or changed input: the plain task runs and its body says why
        get_run_logger().warning(f"{task.name}: no asset for this call ({err})")
        return None
    asset = Asset(
        key=asset_key(plan.final_dir),
        properties=AssetProperties(
            name=f"{plan.kind} {plan.identity[:12]}",
            description=f"bidsflow `{plan.kind}` artifact (identity {plan.identity[:16]}) of recipe `{recipe.name}`",
        ),
    )
    deps = [asset_key(a.path) for a in args if isinstance(a, ArtifactRef)]
    return MaterializingTask(
        fn=task.fn,
        assets=[asset],
        asset_deps=deps or None,
        name=task.name,
        cache_policy=task.cache_policy,
        persist_result=True,
    )


def _run(task, recipe: Recipe, *args, refresh: bool = False) -> ArtifactRef:
    """Runs a step task with its cache under the run root; returns its ref.

    A cached result whose artifact was deleted or modified is not trusted:
    the cache is refreshed and the step rebuilds it. A step whose artifact
    was built before this call says so: its flow run's name gets ` · cached`
    and the log gives when it was built and how long that took.
    """
    stale = task.cache_policy.output_is_stale(recipe, *args)
    runnable = _asset_task(task, recipe, args) or task
    started = time.time()
    with torch_threads(recipe.execution.threads):  # same bits in any process (see execution.threads)
        ref = runnable.with_options(
            result_storage=Path(recipe.run_root).resolve() / PREFECT_RESULTS_DIR,
            refresh_cache=True if (refresh or stale) else None,
            task_run_name=task_run_name(task.name),
        )(recipe, *args, refresh=refresh)
    built = ref.meta.get(BUILD_INFO) or {}
    if built_before(ref, started):
        mark_cached(built)
    return ref


def mark_cached(built: dict) -> None:
    """Renames the current flow run `<name> · cached` and logs when and in how long its artifact was built."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(built["finished_at"]))
    get_run_logger().info(f"cached: artifact built {when} in {built.get('seconds', 0):.1f} s; nothing recomputed")
    if flow_run.id and not str(flow_run.name).endswith(CACHED_SUFFIX):
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=f"{flow_run.name}{CACHED_SUFFIX}")


def ref_from_run(recipe: Recipe, from_run: str, key: str, label: str | None = None) -> ArtifactRef:
    """Returns an artifact ref recorded by a run ('latest' or a run id prefix) under the recipe's run root."""
    try:
        record = load_run(Path(recipe.run_root).resolve(), from_run)
    except FileNotFoundError as err:
        raise ArtifactError(f"{err}; a step needs the artifacts of an earlier run (or explicit refs)") from None
    refs: dict[str, Any] = record["refs"]
    if key not in refs:
        raise ArtifactError(f"run {record['run_id']} has no {key} artifact; it has {sorted(refs)}")
    found = refs[key]
    if label is not None or "digest" not in found:
        if label is None:
            label = next(iter(found))
        if label not in found:
            raise ArtifactError(f"run {record['run_id']} has no {key} {label!r}; it has {sorted(found)}")
        found = found[label]
    return ArtifactRef.model_validate(found)


@flow(name="prepare-data", flow_run_name=flow_run_name("data"), log_prints=True)
def data_flow(recipe: Recipe, refresh: bool = False) -> ArtifactRef:
    """Assembles the pool, validation examples and test items."""
    return _run(prepare_data, recipe, refresh=refresh)


@flow(name="warmup", flow_run_name=flow_run_name("warmup"), log_prints=True)
def warmup_flow(
    recipe: Recipe, data: ArtifactRef | None = None, from_run: str = "latest", refresh: bool = False
) -> ArtifactRef:
    """Trains the warmup LoRA (one checkpoint per epoch)."""
    data = data or ref_from_run(recipe, from_run, "data")
    return _run(warmup, recipe, data, refresh=refresh)


@flow(name="featurize", flow_run_name=flow_run_name("features"), log_prints=True)
def features_flow(
    recipe: Recipe,
    data: ArtifactRef | None = None,
    warm: ArtifactRef | None = None,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Computes gradient features of pool and validation examples."""
    data = data or ref_from_run(recipe, from_run, "data")
    warm = warm or ref_from_run(recipe, from_run, "warmup")
    return _run(featurize, recipe, data, warm, refresh=refresh)


@flow(name="influence", flow_run_name=flow_run_name("influence"), log_prints=True)
def influence_flow(
    recipe: Recipe,
    data: ArtifactRef | None = None,
    warm: ArtifactRef | None = None,
    feats: ArtifactRef | None = None,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Computes the influence matrix into DuckDB."""
    data = data or ref_from_run(recipe, from_run, "data")
    warm = warm or ref_from_run(recipe, from_run, "warmup")
    feats = feats or ref_from_run(recipe, from_run, "features")
    return _run(compute_influence, recipe, data, warm, feats, refresh=refresh)


@flow(name="select", flow_run_name=flow_run_name("select"), log_prints=True)
def select_flow(
    recipe: Recipe,
    method: str = DEFAULT_METHOD,
    budget: float = 0.1,
    data: ArtifactRef | None = None,
    infl: ArtifactRef | None = None,
    reps: ArtifactRef | None = None,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Selects a subset with one method at one budget (`reps`: representations, for selectors that need them)."""
    data = data or ref_from_run(recipe, from_run, "data")
    infl = infl or ref_from_run(recipe, from_run, "influence")
    if "representations" in get_selector(method).needs and reps is None:
        reps = ref_from_run(recipe, from_run, "representations")
    return _run(select_subset, recipe, data, infl, method, budget, reps, refresh=refresh)


@flow(name="represent", flow_run_name=flow_run_name("represent"), log_prints=True)
def represent_flow(
    recipe: Recipe, data: ArtifactRef | None = None, from_run: str = "latest", refresh: bool = False
) -> ArtifactRef:
    """Computes pooled hidden states for the representation-based selectors (rds, rds-plus)."""
    data = data or ref_from_run(recipe, from_run, "data")
    return _run(represent, recipe, data, refresh=refresh)


@flow(name="diagnose", flow_run_name=flow_run_name("diagnose"), log_prints=True)
def diagnose_flow(
    recipe: Recipe,
    infl: ArtifactRef | None = None,
    data: ArtifactRef | None = None,
    warm: ArtifactRef | None = None,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Per-task influence statistics, distribution plots and fidelity (projected vs exact influence)."""
    infl = infl or ref_from_run(recipe, from_run, "influence")
    data = data or ref_from_run(recipe, from_run, "data")
    warm = warm or ref_from_run(recipe, from_run, "warmup")
    return _run(diagnose, recipe, infl, data, warm, refresh=refresh)


@flow(name="finetune", flow_run_name=flow_run_name("finetune"), log_prints=True)
def finetune_flow(
    recipe: Recipe,
    selection: ArtifactRef | None = None,
    label: str | None = None,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Fine-tunes a LoRA on a selected subset (`label` 'method@budget' picks one of a run's selections)."""
    selection = selection or ref_from_run(recipe, from_run, "selections", label)
    return _run(finetune, recipe, selection, refresh=refresh)


@flow(name="evaluate", flow_run_name=flow_run_name("evaluate"), log_prints=True)
def evaluate_flow(
    recipe: Recipe,
    data: ArtifactRef | None = None,
    adapter: ArtifactRef | None = None,
    label: str | None = None,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Evaluates the base model (no adapter) or a fine-tuned adapter (`label` 'method@budget' of a run)."""
    data = data or ref_from_run(recipe, from_run, "data")
    if adapter is None and label is not None:
        adapter = ref_from_run(recipe, from_run, "finetunes", label)
    return _run(evaluate, recipe, data, adapter, refresh=refresh)


STEP_FLOWS = {
    "data": data_flow,
    "warmup": warmup_flow,
    "features": features_flow,
    "influence": influence_flow,
    "represent": represent_flow,
    "diagnose": diagnose_flow,
    "select": select_flow,
    "finetune": finetune_flow,
    "evaluate": evaluate_flow,
}


# ---- The step flows as deployed: only what a person chooses (inputs come from a run record) ----------------------


def _checked_recipe(recipe: Recipe | None, recipe_path: str) -> Recipe:
    """Returns the deployed step's recipe (inline or from its file) once the preflight has passed."""
    recipe = resolve_recipe(recipe, recipe_path)
    preflight(recipe)  # bad lora.layers or an unreachable execution.address fail here, before any work
    return recipe


def _ui_flow(step: str, fn):
    """Returns `fn` as the deployed flow `step-<step>` (its docstring gives the form's field descriptions)."""
    return flow(name=f"step-{step}", flow_run_name=flow_run_name(step), log_prints=True)(fn)


def _data_step(
    recipe: Recipe | None = None, recipe_path: str = DEFAULT_RECIPE_PATH, refresh: bool = False
) -> ArtifactRef:
    """Loads the pool and validation sets (step 0).

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return data_flow(recipe, refresh=refresh)


def _warmup_step(
    recipe: Recipe | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Trains the warmup LoRA on a random slice of the pool (step 1).

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        from_run: Run record whose artifacts feed this step: 'latest' or a run id (prefix).
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return warmup_flow(recipe, from_run=from_run, refresh=refresh)


def _features_step(
    recipe: Recipe | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Computes the projected gradient features of pool and validation examples (step 2).

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        from_run: Run record whose artifacts feed this step: 'latest' or a run id (prefix).
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return features_flow(recipe, from_run=from_run, refresh=refresh)


def _influence_step(
    recipe: Recipe | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Computes the influence matrix (pool x validation) into the DuckDB store (step 3).

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        from_run: Run record whose artifacts feed this step: 'latest' or a run id (prefix).
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return influence_flow(recipe, from_run=from_run, refresh=refresh)


def _diagnose_step(
    recipe: Recipe | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Per-task influence statistics, distribution plot and fidelity (projected vs exact).

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        from_run: Run record whose artifacts feed this step: 'latest' or a run id (prefix).
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return diagnose_flow(recipe, from_run=from_run, refresh=refresh)


def _represent_step(
    recipe: Recipe | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Pooled hidden states of pool and validation examples, for the rds and rds-plus selectors.

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        from_run: Run record whose artifacts feed this step: 'latest' or a run id (prefix).
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return represent_flow(recipe, from_run=from_run, refresh=refresh)


def _select_step(
    recipe: Recipe | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    method: MethodName = DEFAULT_METHOD,
    budget: float = 0.1,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Selects a subset with one method at one budget (step 4).

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        method: Selection method (a registered selector: random, less, bids, ...).
        budget: How much to select: a count (>= 1) or a fraction of the pool (< 1).
        from_run: Run record whose artifacts feed this step: 'latest' or a run id (prefix).
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return select_flow(recipe, method, budget, from_run=from_run, refresh=refresh)


def _finetune_step(
    recipe: Recipe | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    label: str = "",
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Fine-tunes a LoRA on one of a run's selections (step 5).

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        label: The selection to train on, as 'method@budget' (e.g. bids@0.1), from the run record; empty: its first.
        from_run: Run record whose artifacts feed this step: 'latest' or a run id (prefix).
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return finetune_flow(recipe, label=label or None, from_run=from_run, refresh=refresh)


def _evaluate_step(
    recipe: Recipe | None = None,
    recipe_path: str = DEFAULT_RECIPE_PATH,
    label: str | None = None,
    from_run: str = "latest",
    refresh: bool = False,
) -> ArtifactRef:
    """Evaluates the base model or one of a run's fine-tuned adapters on the benchmarks (step 6).

    Args:
        recipe: The run's settings; its run root holds the artifacts the step reads and writes. Empty: the
            file `recipe_path` names.
        recipe_path: A recipe file (relative to the project root), used when `recipe` is empty.
        label: The fine-tune to evaluate, as 'method@budget' (e.g. bids@0.1); empty: the base model.
        from_run: Run record whose artifacts feed this step: 'latest' or a run id (prefix).
        refresh: Recompute even if the artifact is cached.
    """
    recipe = _checked_recipe(recipe, recipe_path)
    return evaluate_flow(recipe, label=label, from_run=from_run, refresh=refresh)


data_step = _ui_flow("data", _data_step)
warmup_step = _ui_flow("warmup", _warmup_step)
features_step = _ui_flow("features", _features_step)
influence_step = _ui_flow("influence", _influence_step)
represent_step = _ui_flow("represent", _represent_step)
diagnose_step = _ui_flow("diagnose", _diagnose_step)
select_step = _ui_flow("select", _select_step)
finetune_step = _ui_flow("finetune", _finetune_step)
evaluate_step = _ui_flow("evaluate", _evaluate_step)

UI_STEP_FLOWS = {
    "data": data_step,
    "warmup": warmup_step,
    "features": features_step,
    "influence": influence_step,
    "represent": represent_step,
    "diagnose": diagnose_step,
    "select": select_step,
    "finetune": finetune_step,
    "evaluate": evaluate_step,
}
