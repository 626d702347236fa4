"""ARC-Challenge: 5-shot letter multiple choice (OLMES requests); accuracy. Validation: its validation split."""

from __future__ import annotations

from bidsml.benchmarks.base import BenchItem, Benchmark, register_benchmark
from bidsml.data import Example
from bidsml.offline import LETTERS, hf_rows, mc_example, parse_repr, request_pairs


def _validation() -> list[Example]:
    val = []
    for r in hf_rows("ai2_arc/ARC-Challenge/validation"):
        ch = parse_repr(r["choices"])
        val.append(
            mc_example(
                "arc_challenge", r["id"], r["question"], ch["text"], ch["label"].index(r["answerKey"]), "reasoning"
            )
        )
    return val


def _items() -> list[BenchItem]:
    items = []
    for doc, req in request_pairs("arc_challenge", "test_mc_5shot"):
        n = len(doc["choices"]) if isinstance(doc.get("choices"), list) else 4
        items.append(
            BenchItem(
                id=f"arc_challenge/{doc['id']}",
                benchmark="arc_challenge",
                task="arc_challenge",
                prompt=req["context"],
                gold_text=f" {LETTERS[int(doc['gold'])]}",
                question=doc["query"],
                choices=[f" {L}" for L in LETTERS[:n]],
                gold=int(doc["gold"]),
            )
        )
    return items


@register_benchmark
class ARCChallenge(Benchmark):
    name = "arc_challenge"
    capability = "reasoning"
    metric = "accuracy"

    def load_validation(self) -> list[Example]:
        return _validation()

    def load_items(self) -> list[BenchItem]:
        return _items()
