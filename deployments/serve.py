"""Serve the pipeline and every step flow as deployments from one process.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve --recipe recipes/demo.yaml

The recipe is a typed parameter (a form in the UI); its default is the file
given here. The pipeline gets an example nightly schedule. Step flows that
take artifact refs (e.g. `select`) are meant to be launched from the UI or
`prefect deployment run` with refs from a run record (`bidsflow runs`).
"""

from __future__ import annotations

import argparse

import flows  # noqa: F401  (sets offline Prefect defaults before Prefect is imported)

# isort: split
from prefect import serve

from bidsml.config import load_recipe
from flows.pipeline import pipeline
from flows.steps import STEP_FLOWS

NIGHTLY = "0 2 * * *"  # example schedule: 02:00 every night


def deployments(recipe_path: str, with_schedule: bool = True) -> list:
    """Returns the deployments: the pipeline (nightly) and one per step."""
    recipe = load_recipe(recipe_path)
    out = [
        pipeline.to_deployment(
            name="bids-pipeline",
            parameters={"recipe": recipe.model_dump(mode="json")},
            cron=NIGHTLY if with_schedule else None,
            tags=["bids"],
        )
    ]
    for name, fl in STEP_FLOWS.items():
        params = {"recipe": recipe.model_dump(mode="json")} if name == "data" else {}
        out.append(fl.to_deployment(name=f"step-{name}", parameters=params, tags=["bids", "step"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/demo.yaml")
    ap.add_argument("--no-schedule", action="store_true", help="serve without the nightly schedule")
    args = ap.parse_args()
    serve(*deployments(args.recipe, not args.no_schedule))


if __name__ == "__main__":
    main()
