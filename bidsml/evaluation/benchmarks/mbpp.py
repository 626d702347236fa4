"""MBPP: 3-shot, greedy, its tests run in the sandbox; pass@1. Validation: a fixed quarter."""

from __future__ import annotations

from bidsml.evaluation.benchmarks.base import BenchItem, declare_benchmark
from bidsml.data.examples import Example
from bidsml.errors import DataError
from bidsml.data.offline import chat_pair, request_docs, request_pairs


def _candidates() -> list[Example]:
    items = []
    for d in request_docs("codex_mbpp", "gold_bpb_0shot"):
        tests = d["test_list"][0]  # one test names the function and its signature
        items.append(
            chat_pair(
                "mbpp",
                d["task_id"],
                f"{d['text']}\nYour code should pass this test:\n{tests}",
                f"```python\n{d['code'].replace(chr(13), '')}\n```",
                task="mbpp",
                capability="code",
            )
        )
    return items


def _items(formulation: str) -> list[BenchItem]:
    items = []
    for doc, req in request_pairs("codex_mbpp", "gold_bpb_3shot"):  # the standard 3 prompt-split exemplars
        ctx = req["context"]
        cut = ctx.rfind(doc["text"])
        if cut < 0:
            raise DataError(f"mbpp {doc['task_id']}: request context does not end with the task text")
        prompt = ctx[:cut] + f"{doc['text']}\nYour code should pass this test: {doc['test_list'][0]}\n```python\n"
        items.append(
            BenchItem(
                id=f"mbpp/{doc['task_id']}",
                benchmark="mbpp",
                task="mbpp",
                prompt=prompt,
                gold_text=doc["code"].replace("\r", "") + "\n```",
                question=doc["text"],
                stop=["```", "\nYour code", "\n\n\n"],
                max_new_tokens=384,
                code_prefix=(doc.get("test_setup_code") or "") + "\n",
                code_suffix="\n\n" + "\n".join(doc["test_list"]) + "\n",
            )
        )
    return items


declare_benchmark("mbpp", "code", "pass@1", items=_items, quarter_of=_candidates, doc=__doc__)
