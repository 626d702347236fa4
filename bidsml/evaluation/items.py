"""The scored items of a recipe's evaluation: every benchmark, limited and spread over its subjects (seeded)."""

from __future__ import annotations

from dataclasses import replace

from bidsml.evaluation.benchmarks import BenchItem, benchmark_for, sample_items
from bidsml.config import target_for


def evaluation_items(recipe) -> list[BenchItem]:
    """Returns the scored items: each benchmark of the recipe, limited and spread over its subjects (seeded).

    Each benchmark in its `evaluation.formulation` (default: the benchmark's own). With `evaluation.generate`, only
    a seeded subset of a benchmark's items keeps its generation budget.
    """
    items = []
    generate = recipe.evaluation.generate or {}
    for name, limit in recipe.evaluation.benchmarks.items():
        bench = benchmark_for(target_for(recipe.data, name))
        chosen = sample_items(bench.items(recipe.evaluation.formulation.get(name)), limit, recipe.sampling_seed)
        if name in generate:  # a seeded subset is decoded; the rest are scored by their gold NLL
            decoded = {it.id for it in sample_items(chosen, generate[name], recipe.sampling_seed + 1)}
            chosen = [it if it.id in decoded else replace(it, max_new_tokens=0) for it in chosen]
        items += chosen
    return items
