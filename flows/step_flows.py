"""One flow per step, derived from the step declarations (tasks/): nothing here names a step.

(Not `flows/steps.py`: Prefect puts a deployment's script folder first on sys.path, where a module named
`steps` would hide the `steps` package.)

- `STEP_FLOWS[name]`: the flow the pipeline and `bidsflow step` call. It
  takes the recipe, the step's inputs (refs by Input.key) and parameters;
  inputs left unset are read from a run record (`from_run`, default the
  latest run under the recipe's run root; `label` picks one of several,
  e.g. a selection `bids@0.1`).
- `DEPLOYED[name]`, also this module's `<name>_step`: the flow a deployment
  runs (`step-<name>`), with only what a person chooses on the UI's form:
  the recipe (inline or a file), the step's parameters, `label`, `from_run`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from prefect import flow

from bidsml.config import Recipe
from bidsml.errors import ArtifactError
from flows.naming import flow_run_name
from flows.params import DEFAULT_RECIPE_PATH, resolve_recipe
from flows.preflight import preflight
from flows.runner import StepFlow, run_step
from tasks.registry import STEPS
from tasks.step import Step
from storage.refs import ArtifactRef
from storage.runs import load_run, run_ref


def resolve_inputs(
    step: Step, recipe: Recipe, given: dict[str, ArtifactRef | None], from_run: str, label: str | None, params
) -> dict[str, ArtifactRef | None]:
    """Returns the step's inputs: those given, the rest from run record `from_run` ('latest' or a run id prefix)."""
    out: dict[str, ArtifactRef | None] = {}
    record = None
    for inp in step.inputs:
        if given.get(inp.key) is not None:
            out[inp.key] = given[inp.key]
        elif inp.optional and (inp.labelled and not label or inp.when is not None and not inp.when(params)):
            out[inp.key] = None  # evaluation without a label: the base model; selection without representations
        else:
            if record is None:
                try:
                    record = load_run(Path(recipe.run_root).resolve(), from_run)
                except FileNotFoundError as err:
                    raise ArtifactError(f"{err}; step {step.name!r} needs the artifacts of an earlier run") from None
            out[inp.key] = run_ref(record, inp.kind, label if inp.labelled else None)
    return out


def _step_flow(step: Step):
    def run(
        recipe: Recipe,
        inputs: dict[str, ArtifactRef | None] | None = None,
        params: dict[str, Any] | None = None,
        label: str | None = None,
        from_run: str = "latest",
        refresh: bool = False,
    ) -> ArtifactRef:
        choice = step.params.model_validate(params or {}) if step.params is not None else None
        refs = resolve_inputs(step, recipe, inputs or {}, from_run, label, choice)
        return run_step(step, recipe, refs, choice, refresh)

    run.__doc__ = step.doc
    run.__name__ = run.__qualname__ = f"{step.name}_flow"
    # parameters are typed objects already; on a Dask worker pydantic cannot rebuild forward references
    return StepFlow(run, name=step.name, flow_run_name=flow_run_name(step.name), log_prints=True, validate_parameters=False)


STEP_FLOWS = {name: _step_flow(step) for name, step in STEPS.items()}


# ---- the step flows as deployed: only what a person chooses (inputs come from a run record) ----------------------

_COMMON_ARGS = {
    "recipe": "The run's settings; its run root holds the artifacts the step reads and writes. Empty: the file "
    "`recipe_path` names.",
    "recipe_path": "A recipe file (relative to the project root), used when `recipe` is empty.",
    "label": "Which of the run's {kinds} to use, as 'method@budget' (e.g. bids@0.1); empty: {default}.",
    "from_run": "Run record whose artifacts feed this step: 'latest' or a run id (prefix).",
    "refresh": "Recompute even if the artifact is cached.",
}


def _deployed_flow(step: Step):
    """Returns the deployed flow `step-<name>`: its form's fields are the step's parameters and run choices."""
    kw = inspect.Parameter.KEYWORD_ONLY
    sig = [
        inspect.Parameter("recipe", kw, default=None, annotation=Recipe | None),
        inspect.Parameter("recipe_path", kw, default=DEFAULT_RECIPE_PATH, annotation=str),
    ]
    docs = {k: _COMMON_ARGS[k] for k in ("recipe", "recipe_path")}
    fields = step.params.model_fields if step.params is not None else {}
    for name, field in fields.items():
        # a required field stays required; a default_factory's value is the form's default (never pydantic's sentinel)
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        sig.append(inspect.Parameter(name, kw, default=default, annotation=field.annotation))
        docs[name] = field.description or ""
    labelled = [i for i in step.inputs if i.labelled]
    if labelled:
        sig.append(inspect.Parameter("label", kw, default="", annotation=str))
        base = "the base model" if labelled[0].optional else "the first"
        docs["label"] = _COMMON_ARGS["label"].format(kinds=labelled[0].kind + "s", default=base)
    if step.inputs:
        sig.append(inspect.Parameter("from_run", kw, default="latest", annotation=str))
        docs["from_run"] = _COMMON_ARGS["from_run"]
    sig.append(inspect.Parameter("refresh", kw, default=False, annotation=bool))
    docs["refresh"] = _COMMON_ARGS["refresh"]

    def deployed(**kwargs: Any) -> ArtifactRef:
        recipe = resolve_recipe(kwargs.pop("recipe", None), kwargs.pop("recipe_path", DEFAULT_RECIPE_PATH))
        preflight(recipe)  # bad lora.layers or an unreachable execution.address fail here, before any work
        choice = {k: kwargs.pop(k) for k in fields if k in kwargs}
        return STEP_FLOWS[step.name](
            recipe,
            params=choice or None,
            label=kwargs.pop("label", "") or None,
            from_run=kwargs.pop("from_run", "latest"),
            refresh=kwargs.pop("refresh", False),
        )

    deployed.__signature__ = inspect.Signature(sig, return_annotation=ArtifactRef)
    deployed.__name__ = deployed.__qualname__ = f"{step.name}_step"
    deployed.__doc__ = f"{step.doc}\n\nArgs:\n" + "".join(f"    {k}: {v}\n" for k, v in docs.items())
    return flow(name=f"step-{step.name}", flow_run_name=flow_run_name(step.name), log_prints=True)(deployed)


DEPLOYED = {name: _deployed_flow(step) for name, step in STEPS.items()}
globals().update(
    {f"{name}_step": fl for name, fl in DEPLOYED.items()}
)  # deployment entrypoints: flows/step_flows.py:<name>_step
