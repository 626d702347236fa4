"""GSM8K: 8-shot chain of thought, greedy; exact match of the final number. Validation: a fixed quarter."""

from __future__ import annotations

from bidsml.evaluation.benchmarks.base import BenchItem, declare_benchmark
from bidsml.data.examples import Example, split_quarter
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


def _validation() -> list[Example]:
    return split_quarter(_candidates())[0]  # a fixed held-out quarter; the rest is scored


def _items() -> list[BenchItem]:
    held = {e.id for e in _validation()}
    items = []
    for doc, req in request_pairs("gsm8k", "gold_bpb_5shot"):  # its context holds the standard 8 CoT exemplars
        iid = f"gsm8k/{doc['id']}"
        if iid in held:
            continue
        items.append(
            BenchItem(
                id=iid,
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


declare_benchmark("gsm8k", "math", "exact_match", _validation, lambda formulation: _items(), doc=__doc__)
