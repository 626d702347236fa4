"""Answer rules: the final number of a GSM8K answer, exact match, and the program a code item runs."""

from __future__ import annotations

import re

from bidsml.evaluation.benchmarks.base import BenchItem

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """Returns the answer number of a chain of thought: after 'the answer is' if present, else the last number."""
    m = re.search(r"answer is\s*\$?(-?\d[\d,]*(?:\.\d+)?)", text, flags=re.I)
    nums = [m.group(1)] if m else _NUMBER.findall(text)
    if not nums:
        return None
    n = nums[-1].replace(",", "").rstrip(".")
    if "." in n:
        n = n.rstrip("0").rstrip(".")
    return n


def score_generation(item: BenchItem, text: str) -> float:
    """Returns 1.0 when a generated answer matches (GSM8K: final number; BBH: first line, exact), else 0.0."""
    if item.answer_rule == "final_number":
        return float(final_number(text) in item.answers)
    return float(text.strip() in item.answers)


def program(item: BenchItem, completion: str) -> str:
    """Returns the program that tests a code completion."""
    return item.code_prefix + completion + item.code_suffix
