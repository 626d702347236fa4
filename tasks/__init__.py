"""The pipeline's steps, one module each; each declares `STEP = Step(...)` (tasks/step.py).

`STEPS` (tasks/registry.py) maps every step's name (the kind of artifact it
builds) to its declaration, in pipeline order; flows/, the CLI and the
deployments derive their step lists from it. Import from the submodules
(`tasks.registry`, `tasks.step`): a folder named `tasks` in a worker's
working directory can stand in for this package, never for its modules.
"""
