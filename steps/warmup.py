"""Step `warmup`: LoRA training on a random fraction of the pool, one checkpoint (adapter + Adam state) per epoch."""

from __future__ import annotations

import random

from bidsml.data import tokenize_all
from bidsml.model import load_tokenizer
from bidsml.train import checkpoint_weights, train_lora
from steps.step import Build, Input, Step
from storage.checkpoints import save_checkpoints
from storage.datasets import load_split
from storage.train_trunk import training_trunk


def warmup_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Returns the seeded random pool rows used for warmup (at least one)."""
    k = max(1, round(n * fraction))
    return sorted(random.Random(f"warmup/{seed}").sample(range(n), k))


def build(b: Build) -> dict:
    """Trains the warmup LoRA; returns the checkpoints (every epoch's adapter and Adam state)."""
    recipe = b.recipe
    pool = load_split(b.inputs["data"], "train")
    rows = warmup_subset(len(pool), recipe.warmup.fraction, recipe.seed)
    pool_items, _ = tokenize_all(load_tokenizer(recipe.model), pool, recipe.model.max_seq_length)
    items = [pool_items[i] for i in rows]
    truncated = sum(pool_items[i].truncated for i in rows)
    # the pool's trunk pays when training passes over at least as many examples as computing it does (the
    # fine-tunes compute it otherwise); a rule of the recipe, so the warmup's bits never depend on a cache
    trunk = None
    if len(rows) * recipe.warmup.epochs >= len(pool):
        trunk = training_trunk(recipe, pool_items, b.run_root, b.progress("pool trunk states (rows)"))
    progress = b.progress("training steps")
    ckpts = train_lora(
        recipe.model,
        recipe.lora,
        recipe.warmup,
        items,
        b.work,
        recipe.seed,
        on_step=lambda s, t, loss: progress.update(s, t, loss=loss),
        trunk=trunk,
        trunk_rows=rows,
        on_warning=lambda m: b.log(m, warning=True),
    )
    weights = checkpoint_weights([c["mean_lr"] for c in ckpts])
    for c, w in zip(ckpts, weights):
        c["weight"] = w
    save_checkpoints(b.work, ckpts)
    return {"n_train": len(items), "truncated": truncated, "checkpoints": ckpts}


STEP = Step(
    name="warmup",
    doc="Trains the warmup LoRA on a random slice of the pool (one checkpoint per epoch).",
    inputs=(Input("data"),),
    sections=("model", "lora", "warmup", "seed"),
    pool="gpu",
    build=build,
)
