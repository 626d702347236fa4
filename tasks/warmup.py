"""Step `warmup`: LoRA training on a random fraction of the pool, one checkpoint (adapter + Adam state) per epoch."""

from __future__ import annotations

import random

from bidsml.data.examples import tokenize_all
from bidsml.model import load_tokenizer
from bidsml.training.lora import TrainSettings, TrunkRows, checkpoint_weights, train_lora
from tasks.adapters import training_trunk
from tasks.step import Build, Input, Step
from storage.checkpoints import save_checkpoints
from storage.datasets import load_split


def warmup_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Returns the seeded random pool rows used for warmup (at least one)."""
    k = max(1, round(n * fraction))
    return sorted(random.Random(f"warmup/{seed}").sample(range(n), k))


def build(b: Build) -> dict:
    """Trains the warmup LoRA; returns the checkpoints (every epoch's adapter and Adam state)."""
    recipe = b.recipe
    pool = load_split(b.inputs["data"], "train")
    rows = warmup_subset(len(pool), recipe.warmup.fraction, recipe.seed)
    items, counts = tokenize_all(load_tokenizer(recipe.model), [pool[i] for i in rows], recipe.model.max_seq_length)
    # the trunk of the warmup's own rows, computed once, pays from the second epoch on (with one epoch it would
    # cost what it saves); a rule of the recipe, so the warmup's bits never depend on what a cache holds
    trunk = None
    if recipe.warmup.epochs >= 2:
        trunk = training_trunk(recipe, items, b.run_root, lambda: b.progress("warmup trunk states (rows)"))
    progress = b.progress("training steps")
    ckpts = train_lora(
        TrainSettings(recipe.model, recipe.lora, recipe.warmup, recipe.seed),
        items,
        b.work,
        trunk=TrunkRows(trunk, list(range(len(items)))) if trunk is not None else None,
        on_step=lambda s, t, loss: progress.update(s, t, loss=loss),
        on_warning=lambda m: b.log(m, warning=True),
    )
    weights = checkpoint_weights([c["mean_lr"] for c in ckpts])
    for c, w in zip(ckpts, weights):
        c["weight"] = w
    save_checkpoints(b.work, ckpts)
    return {"n_train": len(items), "truncated": counts["truncated"], "checkpoints": ckpts}


STEP = Step(
    name="warmup",
    doc="Trains the warmup LoRA on a random slice of the pool (one checkpoint per epoch).",
    inputs=(Input("data"),),
    sections=("model", "lora", "warmup", "seed"),
    ignore={"warmup": ("from_run",)},  # a kept warmup is not built (the pipeline takes that run's artifact)
    pool="gpu",
    build=build,
)
