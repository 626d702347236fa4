"""Step 5: fine-tune a fresh LoRA on a selected subset."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from prefect import task

from bidsml.config import Recipe
from bidsml.data import tokenize_all
from bidsml.model import load_tokenizer
from bidsml.selection import selection_label
from bidsml.train import train_lora
from storage.checkpoints import adapter_path
from storage.refs import ArtifactRef, Plan, materialize
from storage.selections import load_subset, subset_digest
from tasks.common import (
    ArtifactCachePolicy,
    Progress,
    artifact_key,
    code_version,
    model_inputs,
    publish,
    run_root,
    run_tag,
)

CODE = code_version(__name__)


def plan_finetune(recipe: Recipe, selection: ArtifactRef) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="finetune",
        inputs={
            # the subset's content, not the selection's digest: a selection recomputed with the same rows (its
            # composition summary may change with the influence) leaves the fine-tune cached
            "subset": subset_digest(selection),
            **model_inputs(recipe),
            "lora": recipe.lora.model_dump(mode="json"),
            "finetune": recipe.finetune.model_dump(mode="json"),
            "seed": recipe.seed,
            "code": CODE,
        },
    )


@task(cache_policy=ArtifactCachePolicy(plan=plan_finetune), persist_result=True)
def finetune(recipe: Recipe, selection: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Trains a LoRA on the selection's subset; returns the adapter artifact."""
    started = time.time()

    def build(work: Path) -> dict:
        subset = load_subset(selection)
        items, counts = tokenize_all(load_tokenizer(recipe.model), subset, recipe.model.max_seq_length)
        tag = run_tag(recipe, selection_label(selection.meta["method"], selection.meta["budget"]))
        progress = Progress(artifact_key("finetune-progress", tag), f"finetune {tag} training steps")
        ckpts = train_lora(
            recipe.model,
            recipe.lora,
            recipe.finetune,
            items,
            work / "train",
            recipe.seed,
            save_every_epoch=False,
            on_step=lambda s, t, loss: progress.update(s, t, loss=loss),
        )
        last = work / "train" / ckpts[-1]["path"]
        last.rename(adapter_path(work))
        shutil.rmtree(work / "train")
        return {
            "n_train": len(items),
            "method": selection.meta.get("method"),
            "budget": selection.meta.get("budget"),
            "steps": ckpts[-1]["step"],
        }

    ref = materialize(plan_finetune(recipe, selection), build, force=refresh)
    params = {"method": selection.meta.get("method"), "budget": selection.meta.get("budget")}
    tag = run_tag(recipe, selection_label(params["method"], params["budget"]))
    return publish(ref, "finetune", {**params, "finetune": recipe.finetune.model_dump()}, [selection], started, tag=tag)
