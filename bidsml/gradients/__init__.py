"""LESS gradient features: the warmup checkpoints read back (checkpoints), Adam-preconditioned per-example gradients
(features), their random projection (projection), the automatic projection size (autoproj) and its fidelity check
(fidelity).

Import from the module, not this package: a step's identity then covers only the code it runs.
"""
