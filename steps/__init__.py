"""The pipeline's steps, one module each; each declares `STEP = Step(...)` (steps/step.py).

`STEPS` (steps/registry.py) maps every step's name (the kind of artifact it
builds) to its declaration, in pipeline order; flows/, the CLI and the
deployments derive their step lists from it. Import from the submodules
(`steps.registry`, `steps.step`): a folder named `steps` in a worker's
working directory can stand in for this package, never for its modules.
"""
