"""Parameter types of the flows, as the Prefect UI renders them: dropdowns built from the registries.

`MethodName` lists every registered selector and `StepName` every step, so
the run form offers exactly what the installed code can do (a selector added
under bidsml/selectors/ appears in the dropdown).
"""

from __future__ import annotations

from typing import Literal

from bidsml.selectors import SELECTORS
from tasks.registry import STEPS

STEP_NAMES = tuple(STEPS)  # every declared step (tasks/), in pipeline order

MethodName = Literal[tuple(sorted(SELECTORS))]  # type: ignore[valid-type]
StepName = Literal[STEP_NAMES]  # type: ignore[valid-type]


DEFAULT_RECIPE_PATH = "recipes/demo.yaml"  # what a deployment runs when nobody gives it a recipe


def resolve_recipe(recipe, recipe_path: str | None):
    """Returns the run's Recipe: `recipe` when given inline, else the file `recipe_path` names.

    A relative `recipe_path` is looked up in the working directory, then in the
    project's root (where a deployment's pull step puts its runs). Errors name
    the field, the file, and (from `load_recipe`) the bad key.
    """
    from pathlib import Path

    from bidsml.config import Recipe, load_recipe
    from bidsml.errors import RecipeError
    from storage.identity import PROJECT_ROOT

    if recipe is not None:
        return recipe if isinstance(recipe, Recipe) else Recipe.model_validate(recipe)
    if not recipe_path:
        raise RecipeError(
            f"no recipe: give `recipe` (inline) or `recipe_path` (a recipe file, e.g. {DEFAULT_RECIPE_PATH})"
        )
    path = Path(recipe_path).expanduser()
    tried = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise RecipeError(
            f"recipe_path = {recipe_path!r}: no such recipe file (looked for {', '.join(str(p) for p in tried)})"
        )
    try:
        return load_recipe(found)
    except RecipeError as err:
        raise RecipeError(f"recipe_path = {recipe_path!r}: {err}") from None
