"""Step 6: evaluate the base model or a fine-tuned adapter on the benchmarks (bidsml.benchmarks)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact

import bidsml.benchmarks
import bidsml.evaluate
import bidsml.sandbox
import bidsml.sources
from bidsml.benchmarks import BBH_TASKS, BenchItem, contamination, load_benchmark, sample_items
from bidsml.config import Recipe
from bidsml.evaluate import evaluate_benchmark_items, summarize
from bidsml.model import load_base_model, load_lora, load_tokenizer
from bidsml.sandbox import Limits
from bidsml.selection import selection_label
from storage.names import EVAL_ITEMS, EVAL_TABLE, POOL_FILE
from storage.refs import ArtifactRef, Plan, check_ref, materialize
from tasks.common import ArtifactCachePolicy, Progress, code_version, model_inputs, publish, ref_inputs, run_root
from tasks.data import load_split
from tasks.finetune import ADAPTER_DIR

CODE = code_version(bidsml.evaluate, bidsml.benchmarks, bidsml.sandbox, bidsml.sources)


def plan_evaluate(recipe: Recipe, data: ArtifactRef, adapter: ArtifactRef | None = None) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="evaluation",
        inputs={
            **ref_inputs(data=data, adapter=adapter),
            **model_inputs(recipe),
            "evaluation": recipe.evaluation.model_dump(mode="json"),
            "seed": recipe.seed,  # samples the limited items
            "code": CODE,
        },
    )


def model_label(adapter: ArtifactRef | None) -> str:
    if adapter is None:
        return "base"
    return selection_label(adapter.meta["method"], adapter.meta["budget"])


def evaluation_items(recipe: Recipe) -> list[BenchItem]:
    """Returns the scored items: each benchmark of the recipe, limited and spread over its subjects (seeded)."""
    items = []
    for name, limit in recipe.evaluation.benchmarks.items():
        items += sample_items(load_benchmark(name), limit, recipe.seed)
    return items


@task(cache_policy=ArtifactCachePolicy(plan=plan_evaluate), persist_result=True)
def evaluate(
    recipe: Recipe, data: ArtifactRef, adapter: ArtifactRef | None = None, refresh: bool = False
) -> ArtifactRef:
    """Scores every benchmark (standard metric + gold NLL per item); returns the evaluation artifact.

    The summary also gives the pool / test-item n-gram overlap (decontamination check).
    """
    started = time.time()
    label = model_label(adapter)
    ec = recipe.evaluation

    def build(work: Path) -> dict:
        tok = load_tokenizer(recipe.model)
        model = load_base_model(recipe.model)
        if adapter is not None:
            model = load_lora(model, check_ref(adapter) / ADAPTER_DIR)
        model.eval()
        items = evaluation_items(recipe)
        t = time.time()
        progress = Progress(
            f"evaluate-{label}".replace("@", "-").replace(".", "-").replace("_", "-").lower(), "evaluation"
        )
        rows = evaluate_benchmark_items(
            model,
            tok,
            items,
            ec.batch_size,
            ec.gen_batch_size,
            ec.max_length,
            ec.max_new_tokens,
            Limits(timeout_s=ec.sandbox_timeout_s, cpu_s=int(ec.sandbox_timeout_s) + 1, memory_mb=ec.sandbox_memory_mb),
            on_progress=progress.update,
        )
        seconds = time.time() - t
        pd.DataFrame(rows).to_parquet(work / EVAL_ITEMS, index=False)
        table = summarize(rows)
        contam = contamination(load_split(data, POOL_FILE), items, ec.decontamination_ngram)
        summary = {
            "model": label,
            "tasks": table,
            "limits": dict(ec.benchmarks),
            "bbh_tasks": list(BBH_TASKS) if "bbh" in ec.benchmarks else [],
            "contamination": contam,
            "seconds": round(seconds, 1),
        }
        (work / EVAL_TABLE).write_text(json.dumps(summary, indent=1))
        try:
            create_table_artifact(
                [r for r in table if r["level"] != "task"],
                key=f"eval-{label}".replace("@", "-").replace(".", "-").replace("_", "-").lower(),
                description=f"evaluation of {label}",
            )
        except Exception:
            pass
        return summary

    ref = materialize(plan_evaluate(recipe, data, adapter), build, force=refresh)
    return publish(ref, "evaluate", {"model": label}, [data] + ([adapter] if adapter else []), started)
