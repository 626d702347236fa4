"""Decontamination check: scored items that share a word n-gram with the pool."""

from __future__ import annotations

import re

from bidsml.evaluation.benchmarks.base import BenchItem
from bidsml.data.examples import Example

_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Returns the word n-grams of lower-cased text (a text shorter than n gives itself as one gram)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if len(words) >= max(4, n // 2) else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def contamination(pool: list[Example], items: list[BenchItem], n: int = 13) -> dict:
    """Returns, per benchmark, how many scored items share a word n-gram with the pool, and examples of pairs."""
    owner: dict[tuple[str, ...], list[int]] = {}
    for k, it in enumerate(items):
        for g in ngrams(it.question, n):
            owner.setdefault(g, []).append(k)
    hits: dict[int, str] = {}
    for ex in pool:
        text = " ".join(m.content for m in ex.messages)
        for g in ngrams(text, n):
            for k in owner.get(g, ()):
                hits.setdefault(k, ex.id)
    report: dict[str, dict] = {}
    for k, it in enumerate(items):
        r = report.setdefault(it.benchmark, {"n_items": 0, "n_overlapping": 0, "pairs": []})
        r["n_items"] += 1
        if k in hits:
            r["n_overlapping"] += 1
            if len(r["pairs"]) < 20:
                r["pairs"].append({"item": it.id, "pool": hits[k]})
    return {"ngram": n, "benchmarks": report}


def overlap_filter(items: list[BenchItem], examples: list[Example], n: int = 13):
    """Returns drop(example) -> True when the example is a scored item (a planted row's id is
    '<source>/<item id>') or shares a word n-gram with one (its question or gold continuation) or with one of
    `examples` (validation): what a planted source must never hold. The id check catches items too short for
    an n-gram."""
    ids = {it.id for it in items} | {ex.id for ex in examples}
    grams: set[tuple[str, ...]] = set()
    for it in items:
        grams |= ngrams(f"{it.question} {it.gold_text}", n) | ngrams(it.question, n)
    for ex in examples:
        grams |= ngrams(" ".join(m.content for m in ex.messages), n)

    def drop(ex: Example) -> bool:
        origin = ex.id.split("/", 1)[-1]
        return origin in ids or not grams.isdisjoint(ngrams(" ".join(m.content for m in ex.messages), n))

    return drop
