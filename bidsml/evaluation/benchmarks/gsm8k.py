"""GSM8K: 8-shot chain of thought, greedy; exact match of the final number. Validation: a fixed quarter."""

from __future__ import annotations

from bidsml.evaluation.benchmarks.base import BenchItem, declare_benchmark
from bidsml.data.examples import Example
from bidsml.data.offline import chat_pair, request_docs, request_pairs


def _candidates() -> list[Example]:
    docs = request_docs("gsm8k", "gold_bpb_5shot")
    items = [
        chat_pair(
            "gsm8k",
            d["id"],
            f"Solve the math word problem.\n{d['question']}",
            d["choices"][0],
            task="gsm8k",
            capability="math",
        )
        for d in docs
    ]
    return items


def _items(formulation: str) -> list[BenchItem]:
    items = []
    for doc, req in request_pairs("gsm8k", "gold_bpb_5shot"):  # its context holds the standard 8 CoT exemplars
        items.append(
            BenchItem(
                id=f"gsm8k/{doc['id']}",
                benchmark="gsm8k",
                task="gsm8k",
                prompt=req["context"],
                gold_text=" " + doc["choices"][0],
                question=doc["question"],
                answers=[str(doc["short_answer"]).replace(",", "")],
                stop=["Question:", "\n\n", "</s>", "<|im_end|>"],
                max_new_tokens=256,
                answer_rule="final_number",
            )
        )
    return items


declare_benchmark("gsm8k", "math", "exact_match", items=_items, quarter_of=_candidates, doc=__doc__)
