"""The pipeline's steps, one module each; each declares `STEP = Step(...)` (steps/step.py).

`STEPS` maps every step's name (the kind of artifact it builds) to its
declaration, in pipeline order; flows/, the CLI and the deployments derive
their step lists from it.
"""

from steps.registry import discover, plan  # noqa: F401
from steps.step import Build, Input, Sections, Step  # noqa: F401

STEPS: dict[str, Step] = discover()


def get_step(name: str) -> Step:
    """Returns the step named `name`; unknown names raise with the list of steps."""
    if name not in STEPS:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(STEPS)}")
    return STEPS[name]
