"""A user's own capability from files: validation examples and scored items in the pool's message format.

Recipe (a target):

    - task: legal_qa          # the task label (and evaluation.benchmarks key)
      kind: jsonl
      capability: legal
      validation_path: data/legal_val.jsonl   # examples for influence
      items_path: data/legal_test.jsonl       # scored items
      n_val: 8

Every line is `{"id", "messages": [..., {"role": "assistant", "content": gold}]}`;
the gold answer's NLL is always scored. Optional fields make it a stricter test:
`"choices": [...], "gold": k` (multiple choice: the prompt lists the options
lettered, accuracy of the letter), or `"answers": [...]` (greedy generation,
exact match of the stripped first line), and `"task"` (a subtask label).
A bad record is rejected with its file, line and field.
"""

from __future__ import annotations

import json
from pathlib import Path

from bidsml.evaluation.benchmarks.base import BenchItem, Benchmark, register_benchmark
from bidsml.data.examples import Example, check_example
from bidsml.errors import DataError
from bidsml.data.offline import LETTERS, mc_answer, mc_prompt


def _records(path: str | None, key: str, task: str) -> list[tuple[str, dict]]:
    if not path:
        raise DataError(f"target {task!r} (kind jsonl): set `{key}` to a JSONL file")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"target {task!r}: {key} {p} does not exist")
    out = []
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            out.append((where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON: {err.msg}") from None
    if not out:
        raise DataError(f"target {task!r}: {key} {p} has no records")
    return out


def _example_fields(rec: object, task: str) -> object:
    """Returns the message-format part of a record (the optional scoring fields are checked apart)."""
    if not isinstance(rec, dict):
        return rec
    return {"source": task, **{k: rec[k] for k in ("id", "messages") if k in rec}}


def _mc_fields(rec: dict, where: str) -> tuple[list[str], int] | None:
    if "choices" not in rec and "gold" not in rec:
        return None
    choices, gold = rec.get("choices"), rec.get("gold")
    if (
        not isinstance(choices, list)
        or not 2 <= len(choices) <= len(LETTERS)
        or not all(isinstance(c, str) for c in choices)
    ):
        raise DataError(f"{where}: field 'choices': a list of 2-{len(LETTERS)} strings")
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"{where}: field 'gold': an index into 'choices' (0-{len(choices) - 1})")
    return choices, gold


def _split(ex: Example, where: str) -> tuple[list[dict], str]:
    msgs = [m.model_dump() for m in ex.messages]
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: field 'messages': the last message must be the assistant's gold answer")
    return msgs[:-1], msgs[-1]["content"]


@register_benchmark
class JSONLBenchmark(Benchmark):
    name = "jsonl"
    metric = ""  # per item: accuracy (choices), exact_match (answers) or gold_nll

    def __init__(self, target=None):
        super().__init__(target)
        if target is None:
            raise DataError("the jsonl benchmark needs a recipe target with validation_path and items_path")
        if not target.capability:
            raise DataError(f"target {target.task!r} (kind jsonl): set `capability`")
        self.capability = target.capability

    def files(self) -> list[str]:
        return [self.target.validation_path, self.target.items_path]

    def load_validation(self) -> list[Example]:
        out = []
        for where, rec in _records(self.target.validation_path, "validation_path", self.task):
            ex = check_example(_example_fields(rec, self.task), where)
            extra = {"task": self.task, "subtask": rec.get("task"), "capability": self.capability}
            mc = _mc_fields(rec, where)
            if mc:  # the same rendering as the scored items
                msgs, _ = _split(ex, where)
                question = msgs[-1]["content"]
                msgs[-1] = {"role": "user", "content": mc_prompt(question, mc[0])}
                msgs.append({"role": "assistant", "content": mc_answer(*mc)})
                ex = ex.model_copy(update={"messages": [type(ex.messages[0])(**m) for m in msgs]})
            out.append(ex.model_copy(update=extra))
        return out

    def load_items(self, formulation: str) -> list[BenchItem]:
        items = []
        for where, rec in _records(self.target.items_path, "items_path", self.task):
            ex = check_example(_example_fields(rec, self.task), where)
            msgs, gold_text = _split(ex, where)
            question = " ".join(m["content"] for m in msgs if m["role"] == "user")
            item = dict(
                id=f"{self.task}/{ex.id}",
                benchmark=self.task,
                task=rec.get("task") or self.task,
                question=question,
                metric="gold_nll",
            )
            mc = _mc_fields(rec, where)
            answers = rec.get("answers")
            if mc:
                msgs[-1] = {"role": "user", "content": mc_prompt(msgs[-1]["content"], mc[0])}
                item |= dict(
                    gold_text=mc_answer(*mc),
                    choices=[LETTERS[k] for k in range(len(mc[0]))],
                    gold=mc[1],
                    metric="accuracy",
                )
            elif answers is not None:
                if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                    raise DataError(f"{where}: field 'answers': a non-empty list of strings")
                item |= dict(
                    gold_text=gold_text,
                    answers=[a.strip() for a in answers],
                    stop=["\n"],
                    max_new_tokens=int(rec.get("max_new_tokens", 64)),
                    metric="exact_match",
                )
            else:
                item |= dict(gold_text=gold_text)
            items.append(BenchItem(prompt="", messages=msgs, **item))  # rendered with the model's chat template
        return items
