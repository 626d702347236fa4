"""Benchmarks (target tasks), one module each, registered by name.

| benchmark | capability | protocol | metric |
|---|---|---|---|
| mmlu | knowledge | 5-shot (the subject's dev items), letter MC | accuracy |
| arc_challenge | reasoning | 5-shot letter MC (OLMES requests) | accuracy |
| gsm8k | math | 8-shot chain-of-thought, greedy | exact match of the final number |
| humaneval | code | function prompt, greedy, run the tests | pass@1 |
| mbpp | code | 3-shot, greedy, run the tests | pass@1 |
| bbh | reasoning | "bbh-derived": 3-shot from BIG-bench task files, greedy | exact match |
| jsonl | yours | your files: gold NLL, plus MC accuracy or exact match when items say so | |

To add a benchmark, add one module here that calls `declare_benchmark` (its
data: validation examples, or `quarter_of` a set with no dev split, and scored
items) or holds a `@register_benchmark` subclass of `Benchmark` (one that reads
its recipe target's settings); every module of this package is imported, so the
recipe accepts its name as a target `kind` and in `evaluation.benchmarks`.
"""

from __future__ import annotations

import importlib
import pkgutil

from bidsml.evaluation.benchmarks.base import (
    BENCHMARKS,
    BenchItem,
    Benchmark,
    benchmark_for,
    builtin_benchmark,
    declare_benchmark,
    load_benchmark,
    register_benchmark,
    sample_items,
)
from bidsml.evaluation.benchmarks.contamination import contamination, ngrams

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "contamination"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchItem",
    "benchmark_for",
    "builtin_benchmark",
    "contamination",
    "declare_benchmark",
    "load_benchmark",
    "ngrams",
    "register_benchmark",
    "sample_items",
]
