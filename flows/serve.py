"""Serve the pipeline, `select` and every step flow as deployments from one process.

    bidsflow serve --recipe recipes/demo.yaml          # needs PREFECT_API_URL (see `bidsflow ui`)
    python deployments/serve.py --recipe ...           # the same, as a script beside prefect.yaml

The recipe is a typed parameter (a form in the UI); its default is the file
given here. The pipeline gets an example nightly schedule. `select` runs one
method at one budget with the cached upstream (selection, fine-tuning and
evaluation recompute). Step flows read their inputs from the latest run
record unless given refs.
"""

from __future__ import annotations

import argparse

import flows  # noqa: F401  (sets offline Prefect defaults before Prefect is imported)

# isort: split
from prefect import serve

from bidsml.config import load_recipe
from flows.pipeline import pipeline, reselect
from flows.validate import validate
from flows.step_flows import DEPLOYED

NIGHTLY = "0 2 * * *"  # example schedule: 02:00 every night


def deployments(recipe_path: str, with_schedule: bool = True) -> list:
    """Returns the deployments: the pipeline (nightly), select (+ fine-tune + evaluate), one per step."""
    recipe = load_recipe(recipe_path).model_dump(mode="json")
    out = [
        pipeline.to_deployment(
            name="bids-pipeline",
            parameters={"recipe": recipe},
            cron=NIGHTLY if with_schedule else None,
            tags=["bids"],
            description="Every step, every method and budget of the recipe; cached steps are reused.",
        ),
        reselect.to_deployment(
            name="select",
            parameters={"recipe": recipe},
            tags=["bids"],
            description="One method at one budget: selection, fine-tuning and evaluation on the cached upstream.",
        ),
        validate.to_deployment(
            name="validate",
            parameters={"run": "latest", "run_root": recipe["run_root"]},
            tags=["bids"],
            description="Does influence work on the latest run's data? Top/bottom/random fine-tunes per target.",
        ),
    ]
    for name, fl in DEPLOYED.items():
        out.append(
            fl.to_deployment(
                name=f"step-{name}",
                parameters={"recipe": recipe},
                tags=["bids", "step"],
                description=(fl.fn.__doc__ or "").strip().splitlines()[0],
            )
        )
    return out


def serve_all(recipe_path: str, with_schedule: bool = True) -> None:
    """Serves every deployment until interrupted."""
    serve(*deployments(recipe_path, with_schedule))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/demo.yaml")
    ap.add_argument("--no-schedule", action="store_true", help="serve without the nightly schedule")
    args = ap.parse_args()
    serve_all(args.recipe, not args.no_schedule)
