"""Step `tune`: one fine-tuning setting tried on a random subset of the pool, scored by the targets' validation NLL.

The evidence experiment chooses its fine-tuning learning rate and epochs with
these (recipe `tuning`): never on scored items, so the choice cannot leak the
test. One artifact per (lr, epochs, subset size, seed): content-addressed and
cached like every step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from bidsml.data.examples import tokenize_all
from bidsml.model import load_base_model, load_lora, load_tokenizer
from bidsml.represent import response_nll
from tasks.adapters import train_on_pool_rows
from tasks.step import Build, Input, Step
from storage.checkpoints import adapter_path
from storage.datasets import load_split

VAL_NLL_FILE = "validation_nll.parquet"


class TuneParams(BaseModel):
    """One fine-tuning setting on a random subset."""

    lr: float = Field(..., gt=0, description="Peak learning rate of this trial.")
    epochs: int = Field(..., gt=0, description="Epochs of this trial.")
    k: int = Field(..., gt=0, description="Rows of the random subset of the pool it trains on.")
    seed: int = Field(0, description="Seed of the random subset.")


def tune_label(lr: float, epochs: int) -> str:
    return f"lr{lr:g}-ep{epochs}"


def build(b: Build) -> dict:
    """Fine-tunes on k random pool rows with the trial's lr and epochs; scores each target's validation NLL."""
    recipe, p = b.recipe, b.params
    tok = load_tokenizer(recipe.model)
    pool_items, _ = tokenize_all(tok, load_split(b.inputs["data"], "train"), recipe.model.max_seq_length)
    k = min(p.k, len(pool_items))
    rows = np.sort(np.random.default_rng(p.seed).choice(len(pool_items), size=k, replace=False))
    train_cfg = recipe.finetune.model_copy(update={"lr": p.lr, "epochs": p.epochs})
    last = train_on_pool_rows(b, pool_items, rows.tolist(), train_cfg, recipe.seed)
    val = load_split(b.inputs["data"], "val")
    val_items, _ = tokenize_all(tok, val, recipe.model.max_seq_length)
    model = load_lora(load_base_model(recipe.model), adapter_path(b.work)).eval()
    nll = response_nll(model, val_items, tok.pad_token_id, 4096).numpy()
    table = pd.DataFrame({"id": [e.id for e in val], "task": [e.task for e in val], "nll": nll})
    table.to_parquet(b.work / VAL_NLL_FILE, index=False)
    per_task = table.groupby("task")["nll"].mean()
    return {
        "trial": tune_label(p.lr, p.epochs),
        "lr": p.lr,
        "epochs": p.epochs,
        "k": k,
        "seed": p.seed,
        "steps": last["step"],
        "val_nll": {t: round(float(v), 5) for t, v in per_task.items()},
        "val_nll_macro": round(float(per_task.mean()), 5),
    }


def label(inputs, params: TuneParams) -> str:
    return tune_label(params.lr, params.epochs)


STEP = Step(
    name="tune",
    doc="One fine-tuning setting (lr, epochs) trained on a random subset of the pool and scored by the targets' "
    "validation NLL (never by scored items): the evidence experiment's choice of fine-tuning settings.",
    inputs=(Input("data"),),
    # the fine-tune's model, LoRA and the rest of its settings; the trial's lr and epochs are its parameters
    sections=("model", "lora", "finetune", "seed"),
    ignore={"finetune": ("lr", "epochs")},
    params=TuneParams,
    label=label,
    pool="gpu",
    per="call",
    build=build,
)
