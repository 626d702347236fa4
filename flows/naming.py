"""Run names that say what a run is: `selection bids@0.1`, `finetune less@0.05`, `evaluation base`.

Prefect calls these with no arguments when a flow or task run starts; they
read the run's parameters from `prefect.runtime`. A recipe repeated over
seeds (`seeds`, or an explicit `data_seed`) adds ` · seed N` to its runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.registry import STEPS
from tasks.step import Step


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _seed_suffix(recipe: Any) -> str:
    if _get(recipe, "data_seed") is None and not _get(recipe, "seeds"):
        return ""
    return f" · seed {_get(recipe, 'seed')}"


def _round_suffix(r: Any, rounds: Any) -> str:
    """` · round r of n` for a round of a multi-round call (kmq-iterative's selection, or its fine-tune)."""
    return f" · round {r} of {rounds}" if rounds and rounds > 1 and r is not None else ""


def step_run_name(step: Step, params: dict[str, Any]) -> str:
    """Returns `<step> <label>` from the step's own `label` (tasks/), a round suffix for a multi-round call.

    `params`: a step flow's parameters (inputs, params, label) or a deployed form's fields. A call whose inputs
    are read from a run record is named by its `label` parameter, else by the label its absent input gives (the
    base model) or as `latest <kind>`.
    """
    choice = {**params, **(params.get("params") or {})}
    inputs = params.get("inputs") or {}
    parsed = None
    if step.params is not None:
        try:
            parsed = step.params.model_validate({k: choice[k] for k in step.params.model_fields if k in choice})
        except ValueError:  # a name is made for every run, even one whose parameters are wrong: the run says why
            return step.name
    labelled = next((i for i in step.inputs if i.labelled), None)
    given = labelled is None or inputs.get(labelled.key) is not None
    if step.label is None:
        label = None
    elif given or labelled.optional and not params.get("label"):
        label = step.label({**{i.key: None for i in step.inputs}, **inputs}, parsed)
    else:
        label = params.get("label") or f"latest {labelled.kind}"
    if step.rounds is not None:
        try:
            suffix = _round_suffix(parsed.round, step.rounds_of(parsed))
        except Exception:  # options that do not parse: the run says why
            suffix = ""
    else:  # a fine-tune of one round's selection: that round
        meta = _get(inputs.get(labelled.key), "meta") if labelled is not None else None
        suffix = _round_suffix(_get(meta, "round"), _get(meta, "rounds"))
    return f"{step.name} {label}{suffix}" if label else step.name


def describe(step: str, params: dict[str, Any]) -> str:
    """Returns the readable name of a run from its parameters: a step's (step_run_name) or a flow's."""
    recipe = params.get("recipe")
    if recipe is None and params.get("recipe_path"):  # a deployment run from a recipe file: its stem names it
        recipe = {"name": Path(str(params["recipe_path"])).stem}
    if step == "select-finetune-evaluate":  # the select deployment: the selection step's name for its parameters
        what = step + step_run_name(STEPS["selection"], params).removeprefix("selection")
    elif step == "validate":
        return f"validate {params.get('run') or 'latest'}"
    elif step == "pipeline" and _get(recipe, "seeds"):
        return f"experiment {_get(recipe, 'name')} · seeds {', '.join(str(s) for s in _get(recipe, 'seeds'))}"
    elif step == "pipeline":
        what = f"pipeline {_get(recipe, 'name') or ''}".strip()
    else:
        what = step_run_name(STEPS[step], params) if step in STEPS else step
    return what + _seed_suffix(recipe)


def flow_run_name(step: str) -> Callable[[], str]:
    """Returns a `flow_run_name` callable for a step flow."""

    def name() -> str:
        from prefect.runtime import flow_run

        return describe(step, dict(flow_run.parameters or {}))

    return name
