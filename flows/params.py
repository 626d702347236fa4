"""Parameter types of the flows, as the Prefect UI renders them: dropdowns built from the registries.

`MethodName` lists every registered selector and `StepName` every step, so
the run form offers exactly what the installed code can do (a selector added
under bidsml/selectors/ appears in the dropdown).
"""

from __future__ import annotations

from typing import Literal

from bidsml.selectors import SELECTORS

STEP_NAMES = ("data", "warmup", "features", "influence", "diagnose", "represent", "select", "finetune", "evaluate")

MethodName = Literal[tuple(sorted(SELECTORS))]  # type: ignore[valid-type]
StepName = Literal[STEP_NAMES]  # type: ignore[valid-type]
