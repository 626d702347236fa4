"""One flow per step, each rerunnable on its own from existing artifact refs.

Each flow takes the recipe (a typed pydantic parameter: a form in the UI),
the refs of its inputs and its own parameters, and returns a ref. The
pipeline calls them as subflows; a deployment of each lets the UI rerun one
step (e.g. `select` with another method reuses the cached influence store).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from bidsml.config import Recipe
from storage.names import PREFECT_RESULTS_DIR
from storage.refs import ArtifactRef
from tasks.common import output_is_stale
from tasks.data import prepare_data
from tasks.diagnose import diagnose
from tasks.evaluate import evaluate
from tasks.features import featurize
from tasks.finetune import finetune
from tasks.influence import compute_influence
from tasks.represent import represent
from tasks.select import select_subset
from tasks.warmup import warmup


def _run(task, recipe: Recipe, *args, refresh: bool = False) -> ArtifactRef:
    """Runs a step task with its cache under the run root; returns its ref.

    A cached result whose artifact was deleted or modified is not trusted:
    the cache is refreshed and the step rebuilds it.
    """
    stale = output_is_stale(task, recipe, *args)
    return task.with_options(
        result_storage=Path(recipe.run_root).resolve() / PREFECT_RESULTS_DIR,
        refresh_cache=True if (refresh or stale) else None,
    )(recipe, *args, refresh=refresh)


@flow(name="prepare-data", log_prints=True)
def data_flow(recipe: Recipe, refresh: bool = False) -> ArtifactRef:
    """Assembles the pool, validation examples and test items."""
    return _run(prepare_data, recipe, refresh=refresh)


@flow(name="warmup", log_prints=True)
def warmup_flow(recipe: Recipe, data: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Trains the warmup LoRA (one checkpoint per epoch)."""
    return _run(warmup, recipe, data, refresh=refresh)


@flow(name="featurize", log_prints=True)
def features_flow(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Computes gradient features of pool and validation examples."""
    return _run(featurize, recipe, data, warm, refresh=refresh)


@flow(name="influence", log_prints=True)
def influence_flow(
    recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, feats: ArtifactRef, refresh: bool = False
) -> ArtifactRef:
    """Computes the influence matrix into DuckDB."""
    return _run(compute_influence, recipe, data, warm, feats, refresh=refresh)


@flow(name="select", log_prints=True)
def select_flow(
    recipe: Recipe,
    data: ArtifactRef,
    infl: ArtifactRef,
    method: str,
    budget: float,
    reps: ArtifactRef | None = None,
    refresh: bool = False,
) -> ArtifactRef:
    """Selects a subset with one method at one budget (`reps`: representations, for rds)."""
    return _run(select_subset, recipe, data, infl, method, budget, reps, refresh=refresh)


@flow(name="represent", log_prints=True)
def represent_flow(recipe: Recipe, data: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Computes mean-pooled hidden states for the RDS baseline."""
    return _run(represent, recipe, data, refresh=refresh)


@flow(name="diagnose", log_prints=True)
def diagnose_flow(recipe: Recipe, infl: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Per-task influence statistics and distribution plots."""
    return _run(diagnose, recipe, infl, refresh=refresh)


@flow(name="finetune", log_prints=True)
def finetune_flow(recipe: Recipe, selection: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Fine-tunes a LoRA on a selected subset."""
    return _run(finetune, recipe, selection, refresh=refresh)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    recipe: Recipe, data: ArtifactRef, adapter: ArtifactRef | None = None, refresh: bool = False
) -> ArtifactRef:
    """Evaluates the base model (no adapter) or a fine-tuned adapter."""
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
