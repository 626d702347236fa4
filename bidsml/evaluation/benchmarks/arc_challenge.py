"""ARC-Challenge, 5-shot (OLMES request files); accuracy. Validation: its validation split.

Formulations: `mc` (lettered options, the letter scored) and `rc` (cloze: "Question: ...\nAnswer:" and each
choice's text scored as the continuation; accuracy by log-likelihood per character, as OLMES scores small models),
and `rc0`: the same cloze on the test split with no shots (the pruning papers' zero-shot suite, zero_shot.py).
"""

from __future__ import annotations

from bidsml.evaluation.benchmarks.base import BenchItem, declare_benchmark
from bidsml.data.examples import Example
from bidsml.data.offline import LETTERS, hf_rows, mc_example, parse_repr, request_pairs
from bidsml.evaluation.benchmarks.zero_shot import ARC_CHALLENGE_0SHOT, zero_shot_items


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


def _items(formulation: str) -> list[BenchItem]:
    if formulation == "rc":
        return _rc_items()
    if formulation == "rc0":
        return zero_shot_items(ARC_CHALLENGE_0SHOT)
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


def _rc_items() -> list[BenchItem]:
    items = []
    for doc, req in request_pairs("arc_challenge", "test_rc_5shot"):
        texts = [f" {c}" for c in doc["choices"]]
        gold = int(doc["gold"])
        items.append(
            BenchItem(
                id=f"arc_challenge/{doc['id']}",
                benchmark="arc_challenge",
                task="arc_challenge",
                prompt=req["context"],
                gold_text=texts[gold],
                question=doc["query"],
                choice_texts=texts,
                gold=gold,
            )
        )
    return items


declare_benchmark(
    "arc_challenge", "reasoning", "accuracy", _validation, _items, formulations=("mc", "rc", "rc0"), doc=__doc__
)
