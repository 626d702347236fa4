"""The pool-source registry: a source is a function returning examples, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bidsml.data.examples import Example, LoadReport
from bidsml.errors import DataError


@dataclass(frozen=True)
class Source:
    """A registered pool source.

    `load()` returns the examples (or `load(path)` with `needs_path`, which may
    also return a LoadReport); `contaminates` names a benchmark whose test
    problems the source holds, so a run with that target refuses it.
    """

    name: str
    load: Callable
    needs_path: bool = False
    contaminates: str | None = None
    plants: str | None = None  # the target task its rows are in-distribution for (the evidence experiment)


SOURCES: dict[str, Source] = {}


def register_source(name: str, contaminates: str | None = None, needs_path: bool = False, plants: str | None = None):
    """Registers a pool source under `name` (a name registered twice is refused).

    `plants`: the source holds material of target `plants`'s own task family and format, drawn from outside its
    validation examples; the data step removes every row sharing a 13-gram with a scored item or a validation
    example of the recipe, and marks the rest `planted_for`.
    """

    def deco(fn: Callable) -> Callable:
        if name in SOURCES:
            raise ValueError(f"pool source {name!r} registered twice")
        SOURCES[name] = Source(name, fn, needs_path, contaminates, plants)
        return fn

    return deco


def load_source(name: str, path: str | None = None) -> tuple[list[Example], LoadReport]:
    """Returns the examples of a registered source and how many were read and kept."""
    if name not in SOURCES:
        raise DataError(f"unknown pool source {name!r}; registered: {', '.join(sorted(SOURCES))}")
    src = SOURCES[name]
    if src.needs_path:
        if not path:
            raise DataError(f"pool source {name!r} needs a path")
        out = src.load(path)
        return out if isinstance(out, tuple) else (out, LoadReport(read=len(out), kept=len(out)))
    exs = src.load()
    return exs, LoadReport(read=len(exs), kept=len(exs))
