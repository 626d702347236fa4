"""The selector registry: a selector is a function (inputs, K, seed) -> K pool rows, registered by name.

A selector declares the inputs it needs (`influence`: the N x M influence
matrix; `representations`: pooled hidden states of pool and validation
examples); the pipeline computes and passes exactly those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bidsml.errors import SelectionError
from bidsml.selection import check_inputs, resolve_budget

INPUTS = ("influence", "representations")


@dataclass
class SelectorInputs:
    """What a selector may read: influence A (N x M), representations {name: (N|M, H) arrays}, task labels (M)."""

    tasks: list[str]
    influence: np.ndarray | None = None
    representations: dict[str, np.ndarray] = field(default_factory=dict)
    owned: bool = False  # the selector may overwrite `influence` (z-score in place: 4 GB, not 8, at 1M x 1k)

    @property
    def n(self) -> int:
        if self.influence is not None:
            return int(self.influence.shape[0])
        return int(next(v for k, v in self.representations.items() if k.startswith("train")).shape[0])


@dataclass(frozen=True)
class Selector:
    name: str
    fn: Callable[[SelectorInputs, int, int], np.ndarray]
    needs: tuple[str, ...] = ("influence",)
    doc: str = ""


SELECTORS: dict[str, Selector] = {}
DEFAULT_METHOD = "bids"


def register_selector(name: str, needs: tuple[str, ...] = ("influence",)):
    """Registers a selector under `name`; `needs` lists its inputs (see INPUTS). Duplicates are refused."""
    unknown = set(needs) - set(INPUTS)
    if unknown:
        raise ValueError(f"selector {name!r}: unknown inputs {sorted(unknown)}; inputs are {', '.join(INPUTS)}")

    def deco(fn):
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} registered twice")
        SELECTORS[name] = Selector(name, fn, tuple(needs), (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def get_selector(name: str) -> Selector:
    if name not in SELECTORS:
        raise SelectionError(f"unknown selection method {name!r}; choose from {', '.join(sorted(SELECTORS))}")
    return SELECTORS[name]


def run_selector(name: str, inputs: SelectorInputs, budget: float, seed: int = 0) -> np.ndarray:
    """Returns the selected pool rows (in selection order) of selector `name` at `budget`."""
    sel = get_selector(name)
    for need in sel.needs:
        if need == "influence" and inputs.influence is None:
            raise SelectionError(f"method {name!r} needs the influence matrix")
        if need == "representations" and not inputs.representations:
            raise SelectionError(f"method {name!r} needs the representations artifact (the represent step)")
    k = resolve_budget(budget, inputs.n)
    if inputs.influence is not None:
        check_inputs(inputs.influence, inputs.tasks, k)
    for t in set(inputs.tasks):
        if not t:
            raise SelectionError("a validation column has an empty task label")
    return np.asarray(sel.fn(inputs, k, seed), dtype=np.int64)


def select(method: str, A: np.ndarray, tasks: list[str], budget: float, seed: int = 0) -> np.ndarray:
    """Returns the rows an influence-only method selects from the matrix A (no other inputs)."""
    return run_selector(method, SelectorInputs(tasks=list(tasks), influence=A), budget, seed)
