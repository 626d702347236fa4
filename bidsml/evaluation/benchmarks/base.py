"""The benchmark registry: one module per benchmark, registered by name.

A benchmark (a target task) gives two disjoint sets: `validation()`, the
few examples whose gradients define influence (dev / few-shot material, in
the pool's message format), and `items()`, the scored test items with their
protocol (multiple choice, generation with exact match, code run in the
sandbox; every item's gold-continuation NLL is always reported). A recipe
target names its benchmark by `kind` (default: its `task`); a benchmark that
reads users' files declares them in `files()`, so their content is part of
every artifact identity that depends on them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bidsml.data.examples import Example, round_robin_sample, split_quarter
from bidsml.errors import DataError


@dataclass
class BenchItem:
    """One scored test item: a prompt, what a correct answer is, and the gold continuation for the NLL."""

    id: str
    benchmark: str
    task: str  # subject / subtask (the benchmark itself when it has none)
    prompt: str  # the full prompt, few-shot examples included
    gold_text: str  # gold continuation (its NLL is reported)
    question: str  # the item's own text (for decontamination)
    choices: list[str] | None = None  # MC: candidate first tokens (" A", " B", ...)
    gold: int | None = None  # MC and RC: index of the correct choice
    # RC (cloze): each choice's answer text, scored as a whole continuation of the prompt (gold_text is the
    # gold one); accuracy by log-likelihood per character, also reported per token
    choice_texts: list[str] | None = None
    # RC whose choices differ in the context, not the continuation (WinoGrande: each option filled into the
    # sentence, the rest of it scored): choice j is choice_texts[j] after choice_prompts[j]
    choice_prompts: list[str] | None = None
    choice_norm: str = "char"  # RC accuracy by log-likelihood per character ("char") or summed ("none")
    answers: list[str] = field(default_factory=list)  # generation: accepted answers (exact match)
    stop: list[str] = field(default_factory=list)  # generation: stop sequences
    max_new_tokens: int = 0  # generation budget (0: no generation)
    code_prefix: str = ""  # code: program = code_prefix + completion + code_suffix
    code_suffix: str = ""
    answer_rule: str = "exact"  # generation: "exact" (stripped text) or "final_number" (GSM8K)
    messages: list[dict] | None = None  # chat items: the prompt is these rendered with the model's chat template
    capability: str = ""  # set from the benchmark
    metric: str = ""  # set from the benchmark


class Benchmark:
    """A benchmark: subclass, set the class attributes, implement `load_validation` and `load_items`."""

    name: str = ""  # registry name (a target's `kind`)
    capability: str = ""
    metric: str = ""  # accuracy | exact_match | pass@1 | gold_nll
    # how its items are put to the model; the first is the default. Multiple choice offers "mc" (letter options,
    # one letter scored) and "rc" (cloze: each answer text scored as a continuation; what small models can move)
    formulations: tuple[str, ...] = ("generate",)

    def __init__(self, target=None):
        self.target = target  # the recipe's TargetTask (None: defaults)

    @property
    def task(self) -> str:
        """Returns the task label of this target (the recipe's `task`, else the benchmark name)."""
        return self.target.task if self.target is not None else self.name

    def load_validation(self) -> list[Example]:
        raise NotImplementedError

    def load_items(self, formulation: str) -> list[BenchItem]:
        raise NotImplementedError

    def files(self) -> list[str]:
        """Returns the users' files this benchmark reads (their content is hashed into identities)."""
        return []

    def validation(self) -> list[Example]:
        """Returns the validation candidates (never scored)."""
        return list(_cached(self, "load_validation"))

    def formulation(self, asked: str | None = None) -> str:
        """Returns the formulation to score with: `asked` (checked against `formulations`), else the default."""
        if asked is None:
            return self.formulations[0]
        if asked not in self.formulations:
            raise DataError(
                f"benchmark {self.task!r} has no formulation {asked!r}; it offers: {', '.join(self.formulations)}"
            )
        return asked

    def items(self, formulation: str | None = None) -> list[BenchItem]:
        """Returns every scored item in a formulation (default: the benchmark's first), checked disjoint from the
        validation candidates (built once per process: an evaluation per arm reads them all, MMLU's 14k)."""
        return list(_cached(self, "_checked_items", self.formulation(formulation)))

    def _checked_items(self, form: str) -> list[BenchItem]:
        items = [
            replace(it, capability=self.capability, metric=it.metric or self.metric)
            for it in _cached(self, "load_items", form)
        ]
        shared = {e.id for e in self.validation()} & {it.id for it in items}
        if shared:
            raise DataError(f"benchmark {self.task!r}: validation and scored items share ids {sorted(shared)[:5]}")
        return items


def _key(bench: Benchmark) -> tuple:
    t = bench.target
    return (type(bench).__name__, t.model_dump_json() if t is not None else None)


_CACHE: dict[tuple, tuple] = {}


def _cached(bench: Benchmark, method: str, *args) -> tuple:
    key = (*_key(bench), method, *args)
    if key not in _CACHE:
        _CACHE[key] = tuple(getattr(bench, method)(*args))
    return _CACHE[key]


BENCHMARKS: dict[str, type[Benchmark]] = {}


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: registers a benchmark under `cls.name` (a name registered twice is refused)."""
    if not cls.name:
        raise ValueError(f"benchmark class {cls.__name__} has no name")
    if cls.name in BENCHMARKS:
        raise ValueError(f"benchmark {cls.name!r} registered twice")
    BENCHMARKS[cls.name] = cls
    return cls


def declare_benchmark(
    name: str,
    capability: str,
    metric: str,
    validation: Callable[[], list[Example]] | None = None,
    items: Callable[[str], list[BenchItem]] | None = None,
    *,
    quarter_of: Callable[[], list[Example]] | None = None,
    formulations: tuple[str, ...] = ("generate",),
    doc: str = "",
) -> type[Benchmark]:
    """Registers a benchmark declared by its data and returns its class: `items(formulation)` gives its scored
    items; `validation()` its validation candidates, or for a set with no dev split `quarter_of()` the candidates
    whose fixed held-out quarter (`split_quarter`) is the validation set, its ids left out of the scored items.
    A benchmark that reads a recipe target's settings subclasses Benchmark."""
    if items is None or (validation is None) == (quarter_of is None):
        raise TypeError(f"benchmark {name!r}: declare `items` and one of `validation` or `quarter_of`")

    def load_validation(self) -> list[Example]:
        return validation() if quarter_of is None else split_quarter(quarter_of())[0]

    def load_items(self, formulation: str) -> list[BenchItem]:
        if quarter_of is None:
            return items(formulation)
        held = {e.id for e in self.validation()}  # the rest is scored
        return [it for it in items(formulation) if it.id not in held]

    cls = type(
        name,
        (Benchmark,),
        {
            "__doc__": doc,
            "name": name,
            "capability": capability,
            "metric": metric,
            "formulations": formulations,
            "load_validation": load_validation,
            "load_items": load_items,
        },
    )
    return register_benchmark(cls)


def benchmark_for(target) -> Benchmark:
    """Returns the benchmark of a recipe target (its `kind`, default its `task`)."""
    kind = getattr(target, "kind", None) or target.task
    if kind not in BENCHMARKS:
        raise DataError(f"unknown benchmark {kind!r}; registered: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[kind](target)


@functools.lru_cache(maxsize=None)
def builtin_benchmark(name: str) -> Benchmark:
    """Returns a registered benchmark with its default settings (no recipe target)."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; registered: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]()


def load_benchmark(name: str, formulation: str | None = None) -> tuple[BenchItem, ...]:
    """Returns every scored item of a built-in benchmark (never its few-shot / validation material)."""
    return tuple(builtin_benchmark(name).items(formulation))


def sample_items(items: list[BenchItem] | tuple[BenchItem, ...], limit: int | None, seed: int) -> list[BenchItem]:
    """Returns up to `limit` items spread evenly over tasks (seeded round-robin), in a stable order."""
    if limit is None or limit >= len(items):
        return list(items)
    return sorted(round_robin_sample(list(items), limit, seed, key=lambda it: it.task), key=lambda it: it.id)
