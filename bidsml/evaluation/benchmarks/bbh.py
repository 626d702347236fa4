"""BBH-derived: 3-shot from BIG-bench task files, greedy; exact match. Validation: the 3 shots of each task."""

from __future__ import annotations

import functools
import importlib.util
import json
import random
from pathlib import Path

from bidsml.evaluation.benchmarks.base import BenchItem, declare_benchmark
from bidsml.data.examples import Example
from bidsml.errors import DataError
from bidsml.data.offline import LETTERS

# BBH's 23 tasks minus the 3 that BIG-bench does not ship as task files
# (boolean_expressions, multistep_arithmetic_two, web_of_lies were generated for BBH).
BBH_TASKS = (
    "causal_judgment",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies_syllogisms_negation",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction/three_objects",
    "logical_deduction/five_objects",
    "logical_deduction/seven_objects",
    "movie_recommendation",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects/three_objects",
    "tracking_shuffled_objects/five_objects",
    "tracking_shuffled_objects/seven_objects",
    "word_sorting",
)
BBH_SHOTS = 3


def bigbench_root() -> Path:
    spec = importlib.util.find_spec("bigbench")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("BBH-derived tasks need the bigbench package: `pip install --no-deps bigbench`")
    return Path(list(spec.submodule_search_locations)[0]) / "benchmark_tasks"


def _bbhchat_pair(ex: dict) -> tuple[str, list[str]]:
    """Returns (question text with options, accepted answers) of a BIG-bench example."""
    q = ex["input"].strip()
    if "target_scores" in ex:
        opts = list(ex["target_scores"])
        gold = max(range(len(opts)), key=lambda k: ex["target_scores"][opts[k]])
        if len(opts) > len(LETTERS):  # e.g. dyck_languages: answered free-form, as in BBH
            return q, [opts[gold]]
        q += "\nOptions:\n" + "\n".join(f"({LETTERS[k]}) {o}" for k, o in enumerate(opts))
        return q, [f"({LETTERS[gold]})"]
    target = ex["target"]
    return q, [t.strip() for t in (target if isinstance(target, list) else [target])]


@functools.lru_cache(maxsize=None)
def bbh_task(task: str) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """Returns (shots, test pairs) of a BBH-derived task: a seeded shuffle, the first 3 are the shots."""
    path = bigbench_root() / task / "task.json"
    if not path.exists():
        raise DataError(f"BIG-bench task file missing: {path}")
    examples = json.loads(path.read_text())["examples"]
    pairs = [_bbhchat_pair(ex) for ex in examples]
    random.Random(f"bbh/{task}").shuffle(pairs)
    return pairs[:BBH_SHOTS], pairs[BBH_SHOTS:]


def _items() -> list[BenchItem]:
    items = []
    for task in BBH_TASKS:
        shots, tests = bbh_task(task)
        head = "".join(f"Q: {q}\nA: {a[0]}\n\n" for q, a in shots)
        for i, (q, answers) in enumerate(tests):
            items.append(
                BenchItem(
                    id=f"bbh/{task}/{i}",
                    benchmark="bbh",
                    task=task,
                    prompt=f"{head}Q: {q}\nA:",
                    gold_text=f" {answers[0]}",
                    question=q,
                    answers=answers,
                    stop=["\n"],
                    max_new_tokens=32,
                )
            )
    return items


def bbh_validation() -> list[Example]:
    """Returns the BBH-derived shots as chat examples (the influence validation set of the `bbh` target)."""
    out = []
    for task in BBH_TASKS:
        shots, _ = bbh_task(task)
        for i, (q, a) in enumerate(shots):
            out.append(
                Example(
                    id=f"bbh/{task}/shot/{i}",
                    source="bbh",
                    messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a[0]}],
                    task="bbh",
                    subtask=task,
                    capability="reasoning",
                )
            )
    return out


declare_benchmark("bbh", "reasoning", "exact_match", bbh_validation, lambda formulation: _items(), doc=__doc__)
