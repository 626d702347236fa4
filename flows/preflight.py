"""What must hold before the first step runs, checked in seconds instead of failing deep inside a step.

`preflight(recipe)`: `lora.layers` within the model's depth, the lm-eval backend's tasks offline, and the Dask
scheduler of `execution.address` reachable with workers. The CLI calls it
before a run or a step (an error exits 2, no traceback); every step flow
calls it too, so a deployed flow fails at once with the same message.
"""

from __future__ import annotations

from bidsml.config import Recipe
from bidsml.evaluation.lm_eval_tasks import check_lm_eval
from bidsml.model import check_lora_layers
from flows.execution import check_scheduler

_PASSED: set[str] = set()  # recipes (by their relevant settings) already checked in this process


def preflight(recipe: Recipe) -> None:
    """Raises a BidsError naming the recipe key when the run cannot work (see the module docstring)."""
    key = recipe.model.model_dump_json() + str(recipe.lora.layers)
    if key not in _PASSED:
        check_lora_layers(recipe.model, recipe.lora.layers)
        _PASSED.add(key)
    key = recipe.evaluation.model_dump_json()
    if key not in _PASSED:
        check_lm_eval(recipe)  # the lm-eval backend: every task offline
        _PASSED.add(key)
    check_scheduler(recipe)  # remembers the addresses it has checked
