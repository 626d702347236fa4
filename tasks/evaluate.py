"""Step 6: evaluate the base model or a fine-tuned adapter on the target tasks' test items."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact

import bidsml.evaluate
from bidsml.config import Recipe
from bidsml.evaluate import evaluate_items, summarize
from bidsml.model import load_base_model, load_lora, load_tokenizer
from bidsml.selection import selection_label
from storage.names import EVAL_ITEMS, EVAL_TABLE, TEST_FILE
from storage.refs import ArtifactRef, Plan, check_ref, materialize
from tasks.common import ArtifactCachePolicy, code_version, model_inputs, publish, ref_inputs, run_root
from tasks.data import load_split
from tasks.finetune import ADAPTER_DIR

CODE = code_version(bidsml.evaluate)


def plan_evaluate(recipe: Recipe, data: ArtifactRef, adapter: ArtifactRef | None = None) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="evaluation",
        inputs={
            **ref_inputs(data=data, adapter=adapter),
            **model_inputs(recipe),
            "evaluation": recipe.evaluation.model_dump(mode="json"),
            "code": CODE,
        },
    )


def model_label(adapter: ArtifactRef | None) -> str:
    if adapter is None:
        return "base"
    return selection_label(adapter.meta["method"], adapter.meta["budget"])


@task(cache_policy=ArtifactCachePolicy(plan=plan_evaluate), persist_result=True)
def evaluate(
    recipe: Recipe, data: ArtifactRef, adapter: ArtifactRef | None = None, refresh: bool = False
) -> ArtifactRef:
    """Scores MC accuracy and gold-answer NLL per test item; returns the evaluation artifact."""
    started = time.time()
    label = model_label(adapter)

    def build(work: Path) -> dict:
        tok = load_tokenizer(recipe.model)
        model = load_base_model(recipe.model)
        if adapter is not None:
            model = load_lora(model, check_ref(adapter) / ADAPTER_DIR)
        model.eval()
        rows = evaluate_items(
            model, tok, load_split(data, TEST_FILE), recipe.evaluation.batch_size, recipe.model.max_seq_length
        )
        pd.DataFrame(rows).to_parquet(work / EVAL_ITEMS, index=False)
        table = summarize(rows)
        (work / EVAL_TABLE).write_text(json.dumps({"model": label, "tasks": table}, indent=1))
        try:
            create_table_artifact(
                table,
                key=f"eval-{label}".replace("@", "-").replace(".", "-").replace("_", "-").lower(),
                description=f"evaluation of {label}",
            )
        except Exception:
            pass
        return {"model": label, "tasks": table}

    ref = materialize(plan_evaluate(recipe, data, adapter), build, force=refresh)
    return publish(ref, "evaluate", {"model": label}, [data] + ([adapter] if adapter else []), started)
