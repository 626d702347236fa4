"""The selector registry: a selector is a function (inputs, K, seed) -> K pool rows, registered by name.

A selector declares the inputs it needs (`influence`: the N x M influence
matrix; `representations`: pooled hidden states and the quality proxy of pool
and validation examples; `pool`: the pool records' source and optional
quality / labels / embedding fields; `text`: the pool's and the validation
examples' text; `degradation`: per pool row, a pruned model's divergence from
the original, from the `degradation` step) and, optionally, its options (a pydantic
model: the recipe's `selection.options.<name>`) and a recipe check that
fails before any step runs; the pipeline computes and passes exactly those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from bidsml.errors import SelectionError
from bidsml.selection import check_inputs, resolve_budget
from bidsml.influence.streamed import as_source

INPUTS = ("influence", "representations", "pool", "text", "degradation")


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class PoolFields:
    """What the pool records say about themselves, row-aligned with the pool (None when no record has it)."""

    sources: list[str]
    quality: np.ndarray | None = None  # (N,) float64
    labels: list[list[str]] | None = None
    embedding: np.ndarray | None = None  # (N, d) float32
    planted_for: list[str | None] | None = None  # the evidence experiment: the target a planted row serves

    @classmethod
    def from_examples(cls, pool: list, where: str = "pool") -> PoolFields:
        """Reads the optional fields; a field some records have and others lack is an error naming the first gap."""
        out = cls(sources=[e.source for e in pool])
        if any(e.planted_for for e in pool):
            out.planted_for = [e.planted_for for e in pool]
        for name in ("quality", "labels", "embedding"):
            have = [getattr(e, name) is not None for e in pool]
            if not any(have):
                continue
            if not all(have):
                i = have.index(False)
                raise SelectionError(
                    f"{where}: record {i} (id {pool[i].id!r}) has no {name!r} field, but "
                    f"{sum(have)} of {len(pool)} records do; give every record one or none"
                )
            vals = [getattr(e, name) for e in pool]
            if name == "quality":
                out.quality = np.asarray(vals, dtype=np.float64)
            elif name == "labels":
                out.labels = [list(v) for v in vals]
            else:
                dims = {len(v) for v in vals}
                if len(dims) != 1:
                    raise SelectionError(f"{where}: 'embedding' fields differ in length ({sorted(dims)[:5]})")
                out.embedding = np.asarray(vals, dtype=np.float32)
        return out


@dataclass
class SelectorInputs:
    """What a selector may read: influence A (N x M), representations {name: (N|M, ...) arrays}, the pool's fields,
    the task labels (M) and the selector's options."""

    tasks: list[str]
    influence: Any = None  # an array, or a bidsml.influence.streamed.MatrixSource (the store, read in row blocks)
    representations: dict[str, np.ndarray] = field(default_factory=dict)
    pool: PoolFields | None = None
    options: Any = None  # the selector's options model (NoOptions when it has none)
    texts: dict[str, list[str]] | None = None  # {"train": each pool row's text, "val": each validation column's}
    degradation: Any = None  # per pool row: jsd_sum, jsd_mean, n_tokens, output_chars (a DataFrame, pool order)
    extra: dict[str, Any] = field(default_factory=dict)  # what a multi-round selector's pipeline adds (kmq-iterative)

    @property
    def n(self) -> int:
        if self.influence is not None:
            return int(self.influence.shape[0])
        if self.pool is not None:
            return len(self.pool.sources)
        if self.texts is not None:
            return len(self.texts["train"])
        return int(next(v for k, v in self.representations.items() if k.startswith("train")).shape[0])


@dataclass(frozen=True)
class Selector:
    name: str
    fn: Callable[[SelectorInputs, int, int], np.ndarray]
    needs: tuple[str, ...] = ("influence",)
    doc: str = ""
    options: type[BaseModel] = NoOptions
    check: Callable[[Any, BaseModel], None] | None = None  # check(recipe, options): raise ValueError before any step
    # a multi-round selector: how many rounds its options ask for (the pipeline fine-tunes between rounds)
    rounds: Callable[[BaseModel], int] | None = None


SELECTORS: dict[str, Selector] = {}
DEFAULT_METHOD = "bids"


def register_selector(
    name: str,
    needs: tuple[str, ...] = ("influence",),
    options: type[BaseModel] = NoOptions,
    check: Callable[[Any, BaseModel], None] | None = None,
    rounds: Callable[[BaseModel], int] | None = None,
):
    """Registers a selector under `name`; `needs` lists its inputs (see INPUTS); `rounds(options)`: how many
    rounds a multi-round selector runs. Duplicates are refused."""
    unknown = set(needs) - set(INPUTS)
    if unknown:
        raise ValueError(f"selector {name!r}: unknown inputs {sorted(unknown)}; inputs are {', '.join(INPUTS)}")

    def deco(fn):
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        SELECTORS[name] = Selector(name, fn, tuple(needs), doc, options, check, rounds)
        return fn

    return deco


def get_selector(name: str) -> Selector:
    if name not in SELECTORS:
        raise SelectionError(f"unknown selection method {name!r}; choose from {', '.join(sorted(SELECTORS))}")
    return SELECTORS[name]


def selector_options(name: str, given: dict | None = None) -> BaseModel:
    """Returns selector `name`'s options model filled from `given` (the recipe's selection.options.<name>)."""
    return get_selector(name).options(**(given or {}))


def selector_rounds(name: str, options: BaseModel | dict | None = None) -> int:
    """Returns how many rounds selector `name` runs with these options (1 for every single-pass selector)."""
    sel = get_selector(name)
    if sel.rounds is None:
        return 1
    return int(sel.rounds(options if isinstance(options, BaseModel) else sel.options(**(options or {}))))


def round_sizes(k: int, rounds: int) -> list[int]:
    """Returns the cumulative row count after each round of a multi-round selector: round(K (r + 1) / R), the
    last exactly K."""
    return [int(round(k * (r + 1) / rounds)) for r in range(rounds)]


def run_selector(name: str, inputs: SelectorInputs, budget: float, seed: int = 0) -> np.ndarray:
    """Returns the selected pool rows (in selection order) of selector `name` at `budget`.

    A multi-round selector runs the round `inputs.extra["round"]` names: it returns the rows so far (round r of
    R: round(K (r + 1) / R) of the K the budget gives), and reads K as `inputs.extra["final_k"]`.
    """
    sel = get_selector(name)
    for need in sel.needs:
        if need == "influence" and inputs.influence is None:
            raise SelectionError(f"method {name!r} needs the influence matrix")
        if need == "representations" and not inputs.representations:
            raise SelectionError(f"method {name!r} needs the representations artifact (the representations step)")
        if need == "pool" and inputs.pool is None:
            raise SelectionError(f"method {name!r} needs the pool's records (the data artifact)")
        if need == "degradation" and inputs.degradation is None:
            raise SelectionError(
                f"method {name!r} needs the degradation artifact (a recipe with a `prune` section builds it)"
            )
        if need == "text" and inputs.texts is None:
            raise SelectionError(f"method {name!r} needs the pool's and the validation examples' text")
    if inputs.options is None:
        inputs.options = sel.options()
    k = resolve_budget(budget, inputs.n)
    rounds = selector_rounds(name, inputs.options)
    if rounds > 1:
        r = inputs.extra.get("round")
        if r is None:
            raise SelectionError(
                f"{name!r} fine-tunes between rounds: name it in a recipe's selection.methods (`bidsflow run`) or "
                "run the `select` deployment, which build one selection and one fine-tune per round"
            )
        if not 0 <= r < rounds:
            raise SelectionError(f"method {name!r} runs rounds 0..{rounds - 1}; round {r} asked")
        inputs.extra["final_k"] = k
        k = round_sizes(k, rounds)[r]
    if inputs.influence is not None:
        check_inputs(as_source(inputs.influence), inputs.tasks, k)
    for t in set(inputs.tasks):
        if not t:
            raise SelectionError("a validation column has an empty task label")
    rows = np.asarray(sel.fn(inputs, k, seed), dtype=np.int64)
    if len(rows) != k or len(np.unique(rows)) != k:
        raise SelectionError(f"method {name!r} returned {len(rows)} rows ({len(np.unique(rows))} distinct) for K={k}")
    return rows


def select(method: str, A: np.ndarray, tasks: list[str], budget: float, seed: int = 0) -> np.ndarray:
    """Returns the rows an influence-only method selects from the matrix A (no other inputs)."""
    return run_selector(method, SelectorInputs(tasks=list(tasks), influence=A), budget, seed)
