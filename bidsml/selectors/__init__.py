"""Selection methods, registered by name, one module per family: influence-based (influence.py), RDS (rds.py),
BM25 (bm25.py, the lexical control),
RDS+ (rds_plus.py), source-balanced random (balanced.py), kMQ and its iterative refinement (kmq.py), MIG (mig.py).

To add a selector, add one module here with a `@register_selector(name,
needs=...)` function; every module of this package is imported, so the
recipe accepts the name and the pipeline provides the inputs it declares.
"""

from __future__ import annotations

import importlib
import pkgutil

from bidsml.selectors.registry import (
    DEFAULT_METHOD,
    INPUTS,
    SELECTORS,
    NoOptions,
    PoolFields,
    Selector,
    SelectorInputs,
    get_selector,
    register_selector,
    run_selector,
    select,
    selector_options,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "registry":
        importlib.import_module(f"{__name__}.{_m.name}")

METHODS = SELECTORS  # the name earlier releases used

__all__ = [
    "DEFAULT_METHOD",
    "INPUTS",
    "METHODS",
    "NoOptions",
    "PoolFields",
    "SELECTORS",
    "Selector",
    "SelectorInputs",
    "get_selector",
    "register_selector",
    "run_selector",
    "select",
    "selector_options",
]
