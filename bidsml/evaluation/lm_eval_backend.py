"""Scoring with lm-evaluation-harness (the `lm-eval` evaluation backend), offline.

lm-eval's HF model (`HFLM`) wraps the model the evaluation step loaded (the base model from its local folder, with
the fine-tune's LoRA adapter through peft), so both backends score the same weights. The recipe's benchmarks run
as lm-eval's stock tasks over the installed data (bidsml.evaluation.lm_eval_tasks) on exactly the items the
built-in harness would score; the user's own lm-eval tasks run as configured. One row per scored item, in the
built-in harness's columns (`metric` named as lm-eval names it), plus lm-eval's per-item metrics, and lm-eval's own
aggregate table.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

from bidsml.evaluation.lm_eval_tasks import (
    OfflineTask,
    check_loaded,
    shipped_task_manager,
    stock_config,
    task_manager,
)


def lm_eval_version() -> str:
    """Returns the installed lm-eval version (part of the evaluation's identity)."""
    from importlib.metadata import version

    return version("lm_eval")


@dataclass
class LmEvalRun:
    """What lm-eval scores in one evaluation: shipped tasks over built-in items, and the user's own tasks."""

    shipped: list[OfflineTask] = field(default_factory=list)
    capability: dict[str, str] = field(default_factory=dict)  # benchmark -> capability
    task_of: dict[str, str] = field(default_factory=dict)  # built-in item id -> its task (subject)
    user: dict[str, tuple[list[str], int | None]] = field(default_factory=dict)  # name -> (leaf tasks, limit)
    include_path: str | None = None
    num_fewshot: dict[str, int] = field(default_factory=dict)  # benchmark or user task -> shots


def _tasks(run: LmEvalRun, max_new_tokens: int = 256) -> tuple[dict, dict[str, dict], dict[str, list[int]]]:
    """Returns (lm-eval tasks by name, per task what its rows are, samples per task for limits).

    A shipped generation task decodes at most `max_new_tokens` (the recipe's cap; lm-eval's default is 256)."""
    tm = _manager(run)
    specs, about, samples = [], {}, {}
    for t in run.shipped:
        cfg = {**stock_config(t.name), **t.overrides}
        if cfg.get("output_type") == "generate_until":
            gen = dict(cfg.get("generation_kwargs") or {})
            gen["max_gen_toks"] = min(int(gen.get("max_gen_toks", 256)), max_new_tokens)
            cfg["generation_kwargs"] = gen
        if t.benchmark in run.num_fewshot:
            cfg["num_fewshot"] = run.num_fewshot[t.benchmark]
        specs.append(cfg)
        about[t.name] = {"benchmark": t.benchmark, "ids": t.item_ids, "primary": t.primary}
    for name, (leaves, limit) in run.user.items():
        for leaf in leaves:
            cfg = stock_config(leaf, run.include_path)
            if name in run.num_fewshot or leaf in run.num_fewshot:
                cfg["num_fewshot"] = run.num_fewshot.get(leaf, run.num_fewshot.get(name))
            specs.append(cfg)
            about[leaf] = {"benchmark": name, "ids": None, "primary": None, "limit": limit}
    loaded = tm.load(specs)["tasks"] if specs else {}
    for name, task in loaded.items():
        check_loaded(name, task)
        limit = about[name].get("limit")
        if limit is not None:
            n = len(task.test_docs() if task.has_test_docs() else task.validation_docs())
            samples[name] = list(range(min(limit, n)))
        if about[name]["primary"] is None:
            about[name]["primary"] = _first_metric(task)
        about[name]["delimiter"] = len(task.config.target_delimiter or "")
    return loaded, about, samples


def _manager(run: LmEvalRun):
    """Returns the TaskManager a run loads its tasks with: the shipped tasks' folders alone when it has no task of
    the user's (the whole catalogue's index costs seconds per process)."""
    return task_manager(run.include_path) if run.user else shipped_task_manager()


def _first_metric(task) -> str:
    """Returns a user task's primary "metric,filter": its first metric under its first filter."""
    metrics = [m["metric"] for m in (task.config.metric_list or [])] or list(task._metric_fn_list)
    filters = [f["name"] for f in (task.config.filter_list or [])] or ["none"]
    return f"{metrics[0]},{filters[0]}"


def evaluate_lm_eval(
    model, tokenizer, run: LmEvalRun, batch_size: int, max_length: int, seed: int, max_new_tokens: int = 256
):
    """Returns (one row per scored item, lm-eval's aggregate results) for `run`, scored by lm-eval on `model`.

    `max_new_tokens`: the cap on lm-eval's max_gen_toks for the shipped generation tasks."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing here may reach the hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task notes about CLI flags; errors still show
    loaded, about, samples = _tasks(run, max_new_tokens)
    if not loaded:
        return [], {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              device=str(next(model.parameters()).device))
    out = evaluator.simple_evaluate(
        model=lm,
        tasks=list(loaded.values()),
        samples=samples or None,
        log_samples=True,
        bootstrap_iters=0,  # the report's intervals are the project's own (hierarchical bootstrap)
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        task_manager=_manager(run),
    )
    rows = []
    for name, logged in sorted(out["samples"].items()):
        rows += _rows(name, logged, about[name], run, lm)
    aggregate = {
        "version": lm_eval_version(),
        "results": _plain(out["results"]),
        "n-shot": _plain(out.get("n-shot", {})),
        "higher_is_better": _plain(out.get("higher_is_better", {})),
    }
    return rows, aggregate


def _rows(name: str, logged: list[dict], about: dict, run: LmEvalRun, lm) -> list[dict]:
    """Returns one row per doc of a task (its filters' metrics merged into `metrics`)."""
    by_doc: dict[int, list[dict]] = defaultdict(list)
    for s in logged:
        by_doc[int(s["doc_id"])].append(s)
    primary = about["primary"]
    rows = []
    for doc_id, entries in sorted(by_doc.items()):
        metrics = {f"{m},{s['filter']}": _num(s[m]) for s in entries for m in s["metrics"]}
        first = entries[0]
        ids = about["ids"]
        item_id = ids[doc_id] if ids is not None else f"{name}/{doc_id}"
        args = [tuple(a) for a in first["arguments"]]
        row = {
            "id": item_id,
            "benchmark": about["benchmark"],
            "task": run.task_of.get(item_id, name) if ids is not None else name,
            "capability": run.capability.get(about["benchmark"], "lm-eval"),
            "metric": metric_name(primary),
            "score": metrics.get(primary, float("nan")),
            "score_per_token": float("nan"),
            "n_choices": 0,
            "nll": float("nan"),
            "tokens": 0,
            "bpb": float("nan"),
            "output": None,
            "harness": "lm-eval",
            "lm_eval_task": name,
            "metrics": json.dumps(metrics, sort_keys=True),
            "choice_logprobs": None,
            "pred": -1,
            "prompt_sha": _sha(args[0][0]) if args and isinstance(args[0][0], str) else None,
        }
        if len(args[0]) == 2 and all(isinstance(a[1], str) for a in args):  # log-likelihood of continuations
            lls = [float(r[0][0]) for r in first["resps"]]
            gold = first["target"]
            if not isinstance(gold, int):  # a target given as the answer's text
                texts = [a[1].strip() for a in args]
                gold = texts.index(str(gold).strip()) if str(gold).strip() in texts else 0
            ctx, cont = args[gold]
            _, cont_enc = lm._encode_pair(ctx, cont)
            row.update(
                n_choices=len(lls) if len(lls) > 1 else 0,
                nll=-lls[gold] / max(len(cont_enc), 1),
                tokens=len(cont_enc),
                bpb=-lls[gold] / (math.log(2) * max(len(cont.encode("utf-8")), 1)),
                choice_logprobs=lls,
                # lm-eval's acc_norm divides by each choice's length without the target delimiter (" ")
                pred=_argmax(lls, [len(a[1]) - about["delimiter"] for a in args] if primary.startswith("acc_norm") else None),
            )
        else:  # generation: the model's text, after the primary filter
            for s in entries:
                if primary.endswith("," + s["filter"]) or len(entries) == 1:
                    resp = s["resps"][0]
                    resp = resp[0] if isinstance(resp, list) and resp else resp
                    row["output"] = resp if isinstance(resp, str) else None  # text; not a rolling log-likelihood
                    break
        rows.append(row)
    return rows


def metric_name(key: str) -> str:
    """Returns how a report names lm-eval's "metric,filter" key: "acc", "exact_match (strict-match)"."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric} ({filt})"


def _argmax(lls: list[float], lengths: list[int] | None) -> int:
    vals = [ll / max(n, 1) for ll, n in zip(lls, lengths)] if lengths else lls
    return max(range(len(vals)), key=lambda j: (vals[j], -j))


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _plain(obj):
    """Returns lm-eval's result dicts as JSON-safe values (NaN and objects as strings)."""
    return json.loads(json.dumps(obj, default=str))


def plan_lm_eval(ec, items: list, formulation_of) -> tuple[LmEvalRun, list, dict[str, str]]:
    """Returns (what lm-eval scores, the items left to the built-in harness, who scores each benchmark and why).

    `ec`: the recipe's evaluation section; `formulation_of(benchmark)`: the formulation its items are in.
    """
    from bidsml.evaluation.lm_eval_tasks import BUILTIN_ONLY, check_user_tasks

    run = LmEvalRun(include_path=ec.lm_eval.include_path, num_fewshot=dict(ec.lm_eval.num_fewshot))
    left, harness = [], {}
    by_bench: dict[str, list] = defaultdict(list)
    for it in items:
        by_bench[it.benchmark].append(it)
    for bench, its in by_bench.items():
        tasks = add_items(run, its, formulation_of(bench))
        if tasks:
            harness[bench] = "lm-eval: " + ", ".join(sorted({_family(t.name) for t in tasks}))
        else:
            left += its
            harness[bench] = "builtin: " + BUILTIN_ONLY.get(bench, "no lm-eval task reads this benchmark offline")
    for name, leaves in check_user_tasks(ec.lm_eval.tasks, ec.lm_eval.include_path).items():
        run.user[name] = (leaves, ec.lm_eval.tasks[name])
        harness[name] = "lm-eval: " + ", ".join(leaves[:3]) + (f" (+{len(leaves) - 3})" if len(leaves) > 3 else "")
    return run, left, harness


def add_items(run: LmEvalRun, items: list, formulation: str | None) -> list[OfflineTask]:
    """Adds one benchmark's built-in items to `run` as the shipped lm-eval tasks that score them; returns those
    tasks (none: lm-eval has no offline task for the benchmark, and nothing is added)."""
    from bidsml.evaluation.lm_eval_tasks import offline_tasks

    tasks = offline_tasks(items[0].benchmark, items, formulation) if items else []
    if tasks:
        run.shipped += tasks
        run.capability[items[0].benchmark] = items[0].capability
        run.task_of.update({it.id: it.task for it in items})
    return tasks


def _family(task_name: str) -> str:
    """Returns how a shipped task family is named in notes: mmlu_<subject> -> mmlu_*."""
    for head in ("mmlu_", "bbh_fewshot_"):
        if task_name.startswith(head):
            return head + "*" + ("_continuation" if task_name.endswith("_continuation") else "")
    return task_name


def identity_of_lm_eval(ec, items: list, formulation_of) -> dict:
    """Returns what an lm-eval evaluation depends on beyond the recipe: lm-eval's version, and every task
    configuration's content (stock YAMLs as installed, the user's YAMLs and their functions' source, the data
    files a user task reads)."""
    from bidsml.evaluation.lm_eval_tasks import config_text, user_data_digests

    run, _, _ = plan_lm_eval(ec, items, formulation_of)
    configs = {}
    for t in run.shipped:
        configs[t.name] = _sha(config_text(t.name))
    for name, (leaves, _) in run.user.items():
        for leaf in leaves:
            configs[leaf] = _sha(config_text(leaf, run.include_path) + json.dumps(user_data_digests(leaf, run.include_path)))
    return {"version": lm_eval_version(), "configs": configs}


def agreement(builtin_rows: list[dict], lm_eval_rows: list[dict], items: list | None = None) -> dict:
    """Returns, per benchmark and over all, how the two harnesses agree on the items both scored.

    `pred_equal`: the share of multiple-choice items (MC and RC) where both chose the same option; `acc_builtin`,
    `acc_lm_eval`: accuracy on those items; `identical_prompts`: items whose scored text is byte-identical, and over
    them `max_loglik_diff`: the largest difference of an option's log-likelihood. With the scored `items`:
    `pred_equal_same_norm`, the share where lm-eval's log-likelihoods, normalised as the built-in harness does (RC:
    per character of " " + the choice; lm-eval's acc_norm divides by the choice's length without the space), choose
    the built-in harness's option.
    """
    mine = {r["id"]: r for r in builtin_rows}
    per: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for r in lm_eval_rows:
        if r["id"] in mine and r.get("choice_logprobs") is not None and mine[r["id"]].get("choice_logprobs") is not None:
            per[r["benchmark"]].append((mine[r["id"]], r))
    by_id = {it.id: it for it in items or []}
    out = {name: _agree(pairs, by_id) for name, pairs in sorted(per.items())}
    out["all"] = _agree([p for pairs in per.values() for p in pairs], by_id)
    return out


def _builtin_choice(item, lls: list[float]) -> int:
    """Returns the option the built-in harness's rule picks from these log-likelihoods (harness.py's)."""
    if item.choice_texts:
        norm = [max(len(t), 1) if item.choice_norm == "char" else 1 for t in item.choice_texts]
        return _argmax([ll / n for ll, n in zip(lls, norm)], None)
    return _argmax(lls, None)


def _agree(pairs: list[tuple[dict, dict]], items: dict | None = None) -> dict:
    if not pairs:
        return {"items": 0}
    same_norm = {}
    if items:
        known = [(a, b) for a, b in pairs if a["id"] in items]
        same_norm["pred_equal_same_norm"] = sum(
            _builtin_choice(items[a["id"]], b["choice_logprobs"]) == int(a["pred"]) for a, b in known
        ) / max(len(known), 1)
    same = [a for a, b in pairs if a["prompt_sha"] == b["prompt_sha"]]
    diffs = [
        max(abs(x - y) for x, y in zip(a["choice_logprobs"], b["choice_logprobs"]))
        for a, b in pairs
        if a["prompt_sha"] == b["prompt_sha"]
    ]
    acc_a = sum(float(a["score"]) for a, _ in pairs) / len(pairs)
    acc_b = sum(float(b["score"]) for _, b in pairs) / len(pairs)
    return {
        "items": len(pairs),
        "pred_equal": sum(int(a["pred"]) == int(b["pred"]) for a, b in pairs) / len(pairs),
        "acc_builtin": acc_a,
        "acc_lm_eval": acc_b,
        "acc_diff": acc_b - acc_a,
        "identical_prompts": len(same),
        "max_loglik_diff": max(diffs) if diffs else None,
        **same_norm,
    }
