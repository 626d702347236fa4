"""Run names that say what a run is: `selection bids@0.1`, `finetune less@0.05`, `evaluation base`.

Prefect calls these with no arguments when a flow or task run starts; they
read the run's parameters from `prefect.runtime`. A recipe repeated over
seeds (`seeds`, or an explicit `data_seed`) adds ` · seed N` to its runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bidsml.selection import selection_label
from storage.selections import selected_by


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _ref_label(ref: Any) -> str | None:
    by = selected_by(ref)
    return by.label if by is not None else None


def _seed_suffix(recipe: Any) -> str:
    if _get(recipe, "data_seed") is None and not _get(recipe, "seeds"):
        return ""
    return f" · seed {_get(recipe, 'seed')}"


def _round_suffix(meta: Any) -> str:
    """` · round r of n` for a selection (or its fine-tune) of an iterative method run over several rounds."""
    rounds, r = _get(meta, "rounds"), _get(meta, "round")
    return f" · round {r} of {rounds}" if rounds and rounds > 1 and r is not None else ""


def _rounds(choice: dict) -> int:
    """How many rounds the chosen selection method runs (1 when the method or its options do not parse)."""
    from tasks.selection import SelectionParams, rounds_of

    try:
        return rounds_of(
            SelectionParams(method=choice["method"], budget=choice["budget"], options=choice.get("options") or {})
        )
    except Exception:  # a name is made for every run, even one whose parameters are wrong: the run says why
        return 1


def describe(step: str, params: dict[str, Any]) -> str:
    """Returns the readable name of a step run from its parameters."""
    recipe = params.get("recipe")
    if recipe is None and params.get("recipe_path"):  # a deployment run from a recipe file: its stem names it
        recipe = {"name": Path(str(params["recipe_path"])).stem}
    choice = {**params, **(params.get("params") or {})}  # a step flow's parameters, or a deployed form's fields
    inputs = params.get("inputs") or {}
    if step in ("selection", "select-finetune-evaluate"):
        what = f"{step} {selection_label(choice.get('method') or '?', choice.get('budget') or 0)}"
        what += _round_suffix({"round": choice.get("round") or 0, "rounds": _rounds(choice)})
    elif step == "finetune":
        what = f"finetune {_ref_label(inputs.get('selection')) or params.get('label') or 'latest selection'}"
        what += _round_suffix(_get(inputs.get("selection"), "meta"))
    elif step == "evaluation":
        what = f"evaluation {_ref_label(inputs.get('adapter')) or params.get('label') or 'base'}"
    elif step == "probe" and choice.get("arm"):
        from bidsml.validate import probe_label

        what = f"probe {probe_label(choice['arm'], choice.get('task') or '', choice.get('seed') or 0)}"
    elif step == "validate":
        return f"validate {params.get('run') or 'latest'}"
    elif step == "pipeline" and _get(recipe, "seeds"):
        return f"experiment {_get(recipe, 'name')} · seeds {', '.join(str(s) for s in _get(recipe, 'seeds'))}"
    elif step == "pipeline":
        what = f"pipeline {_get(recipe, 'name') or ''}".strip()
    else:
        what = step
    return what + _seed_suffix(recipe)


def flow_run_name(step: str) -> Callable[[], str]:
    """Returns a `flow_run_name` callable for a step flow."""

    def name() -> str:
        from prefect.runtime import flow_run

        return describe(step, dict(flow_run.parameters or {}))

    return name
