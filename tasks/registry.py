"""The step registry: every module of this package declares one `STEP`; `plan` turns a call into an identity.

Adding a step is adding a module here (see tasks/step.py); nothing else lists steps.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bidsml.errors import ArtifactError
from tasks.step import Step

_NOT_STEPS = {"step", "registry", "adapters", "__init__"}  # adapters: code steps share (not a step)


def discover() -> dict[str, Step]:
    """Returns {step name: Step} of every module of this folder that declares `STEP`, in pipeline order.

    The modules are listed from this file's folder, not from the `tasks` package's search path: a working
    directory holding a folder named `tasks` (a Dask worker's scratch space, say) would otherwise hide them.
    """
    found: dict[str, Step] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name in _NOT_STEPS:
            continue
        module = importlib.import_module(f"tasks.{info.name}")
        step = getattr(module, "STEP", None)
        if step is None:
            continue
        if step.name in found:
            raise ValueError(
                f"two steps named {step.name!r}: {found[step.name].build.__module__} and {module.__name__}"
            )
        found[step.name] = step
    return {s.name: s for s in pipeline_order(found.values())}


def pipeline_order(steps) -> list[Step]:
    """Returns the steps with every step after the steps whose artifacts it reads (ties: by name); a `loop` input
    (an earlier round's artifact) orders nothing."""
    steps = sorted(steps, key=lambda s: s.name)
    names = {s.name for s in steps}
    out: list[Step] = []
    placed: set[str] = set()
    while len(out) < len(steps):
        ready = [
            s for s in steps if s.name not in placed and {i.kind for i in s.inputs if not i.loop} & names <= placed
        ]
        if not ready:
            left = sorted(names - placed)
            raise ValueError(f"steps {left} read each other's artifacts in a cycle")
        out.append(ready[0])
        placed.add(ready[0].name)
    return out


def section_identity(step: Step, name: str, value: Any) -> Any:
    """Returns what a declared recipe section contributes to the step's identity."""
    if name == "model":
        from storage.identity import model_identity

        return model_identity(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude=set(step.ignore.get(name, ())))
    return value


def _fully_ignored(step: Step, name: str, value: Any) -> bool:
    return isinstance(value, BaseModel) and set(type(value).model_fields) <= set(step.ignore.get(name, ()))


def _code_names(step: Step) -> tuple[str, ...]:
    return (step.build.__name__,) + ((step.identity.__name__,) if step.identity is not None else ())


def code_of(step: Step) -> str:
    """Returns the identity of the step's code as the files are now: `build` and `identity` and what they run,
    not the declaration."""
    from storage.identity import function_identity

    return function_identity(step.build.__module__, *_code_names(step))


@functools.lru_cache(maxsize=None)
def _loaded_code(module: str, names: tuple[str, ...]) -> str:
    from storage.identity import function_identity

    return function_identity(module, *names)


def loaded_code_of(step: Step) -> str:
    """Returns the identity of the step's code as this process first saw it: computed once per process, as the
    code it runs is loaded once (every step call plans, so this is not re-parsed per call)."""
    return _loaded_code(step.build.__module__, _code_names(step))


def plan(step: Step, recipe, inputs: dict[str, Any], params: BaseModel | None = None):
    """Returns the step's `Plan` for this call: its identity = code + declared sections + input digests + params.

    Every given input is checked to be intact on disk (a changed or deleted
    input raises ArtifactError naming it).
    """
    from tasks.step import Sections
    from storage.refs import Plan, check_ref

    view = Sections(step.name, recipe, step.sections)
    digests = {}
    for inp in step.inputs:
        ref = inputs.get(inp.key)
        if ref is None and not inp.optional:
            raise ArtifactError(f"step {step.name!r} needs its {inp.key!r} input ({inp.kind} artifact)")
        if ref is not None:
            check_ref(ref)
        if inp.hashed:
            digests[inp.key] = ref.digest if ref is not None else None
    values = {
        # a section every field of which is ignored only gives `build` something to read: it is not in the identity
        "sections": {
            name: section_identity(step, name, getattr(view, name))
            for name in step.sections
            if not _fully_ignored(step, name, getattr(view, name))
        },
        "inputs": digests,
        "params": params.model_dump(mode="json") if params is not None else None,
        "code": loaded_code_of(step),
    }
    if step.identity is not None:
        values["derived"] = step.identity(view, inputs, params)
    return Plan(run_root=str(Path(recipe.run_root).resolve()), kind=step.name, inputs=values)


STEPS: dict[str, Step] = discover()


def get_step(name: str) -> Step:
    """Returns the step named `name`; unknown names raise with the list of steps."""
    if name not in STEPS:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(STEPS)}")
    return STEPS[name]


def step_identities() -> dict[str, str]:
    """Returns {step: the identity of its code}, as the files are now (what a worker's code is compared against)."""
    return {name: code_of(step) for name, step in discover().items()}
