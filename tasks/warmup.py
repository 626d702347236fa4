"""Step 1b: warmup LoRA training on a random fraction of the pool, one checkpoint per epoch."""

from __future__ import annotations

import random
import time
from pathlib import Path

from prefect import task

from bidsml.config import Recipe
from bidsml.data import tokenize_all
from bidsml.model import load_tokenizer
from bidsml.train import checkpoint_weights, train_lora
from storage.checkpoints import save_checkpoints
from storage.datasets import load_split
from storage.refs import ArtifactRef, Plan, materialize
from tasks.common import (
    ArtifactCachePolicy,
    Progress,
    artifact_key,
    code_version,
    model_inputs,
    publish,
    ref_inputs,
    run_root,
    run_tag,
)

CODE = code_version(__name__)


def plan_warmup(recipe: Recipe, data: ArtifactRef) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="warmup",
        inputs={
            **ref_inputs(data=data),
            **model_inputs(recipe),
            "lora": recipe.lora.model_dump(mode="json"),
            "warmup": recipe.warmup.model_dump(mode="json"),
            "seed": recipe.seed,
            "code": CODE,
        },
    )


def warmup_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Returns the seeded random pool rows used for warmup (at least one)."""
    k = max(1, round(n * fraction))
    return sorted(random.Random(f"warmup/{seed}").sample(range(n), k))


@task(cache_policy=ArtifactCachePolicy(plan=plan_warmup), persist_result=True)
def warmup(recipe: Recipe, data: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Trains the warmup LoRA; returns the artifact holding every epoch's adapter and Adam state."""
    started = time.time()

    def build(work: Path) -> dict:
        pool = load_split(data, "train")
        rows = warmup_subset(len(pool), recipe.warmup.fraction, recipe.seed)
        items, counts = tokenize_all(load_tokenizer(recipe.model), [pool[i] for i in rows], recipe.model.max_seq_length)
        progress = Progress(
            artifact_key("warmup-progress", run_tag(recipe)),
            f"warmup {run_tag(recipe)} training steps".replace("  ", " "),
        )
        ckpts = train_lora(
            recipe.model,
            recipe.lora,
            recipe.warmup,
            items,
            work,
            recipe.seed,
            on_step=lambda s, t, loss: progress.update(s, t, loss=loss),
        )
        weights = checkpoint_weights([c["mean_lr"] for c in ckpts])
        for c, w in zip(ckpts, weights):
            c["weight"] = w
        save_checkpoints(work, ckpts)
        return {"n_train": len(items), "truncated": counts["truncated"], "checkpoints": ckpts}

    ref = materialize(plan_warmup(recipe, data), build, force=refresh)
    return publish(
        ref,
        "warmup",
        {"lora": recipe.lora.model_dump(), "warmup": recipe.warmup.model_dump()},
        [data],
        started,
        tag=run_tag(recipe),
    )
