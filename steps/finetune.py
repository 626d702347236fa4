"""Step `finetune`: a fresh LoRA trained on a selected subset."""

from __future__ import annotations

import shutil

from bidsml.data import tokenize_all
from bidsml.model import load_tokenizer
from bidsml.train import train_lora
from steps.step import Build, Input, Step
from storage.checkpoints import adapter_path
from storage.selections import load_subset, selected_by, subset_digest


def subset(recipe, inputs, params) -> dict:
    """Returns the subset's content hash: a selection recomputed with the same rows (its composition summary may
    change with the influence) leaves the fine-tune cached."""
    return {"subset": subset_digest(inputs["selection"])}


def build(b: Build) -> dict:
    """Trains a LoRA on the selection's subset; writes the adapter."""
    recipe, selection = b.recipe, b.inputs["selection"]
    items, counts = tokenize_all(load_tokenizer(recipe.model), load_subset(selection), recipe.model.max_seq_length)
    progress = b.progress("training steps")
    ckpts = train_lora(
        recipe.model,
        recipe.lora,
        recipe.finetune,
        items,
        b.work / "train",
        recipe.seed,
        save_every_epoch=False,
        on_step=lambda s, t, loss: progress.update(s, t, loss=loss),
    )
    last = b.work / "train" / ckpts[-1]["path"]
    last.rename(adapter_path(b.work))
    shutil.rmtree(b.work / "train")
    return {
        "n_train": len(items),
        **selected_by(selection).model_dump(),  # method and budget: the label of this fine-tune and its evaluation
        "steps": ckpts[-1]["step"],
    }


def label(inputs, params) -> str:
    return selected_by(inputs["selection"]).label


STEP = Step(
    name="finetune",
    doc="Fine-tunes a LoRA on one of a run's selections.",
    inputs=(Input("selection", labelled=True, hashed=False),),
    sections=("model", "lora", "finetune", "seed"),
    identity=subset,
    pool="gpu",
    label=label,
    per_run=False,
    build=build,
)
