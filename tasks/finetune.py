"""Step `finetune`: a fresh LoRA trained on a selected subset."""

from __future__ import annotations

from bidsml.data.examples import tokenize_all
from bidsml.model import load_tokenizer
from tasks.adapters import train_on_pool_rows
from tasks.step import Build, Input, Step
from storage.datasets import load_split
from storage.selections import load_selection_table, selected_by, subset_digest


def subset(recipe, inputs, params) -> dict:
    """Returns the subset's content hash: a selection recomputed with the same rows (its composition summary may
    change with the influence) leaves the fine-tune cached."""
    return {"subset": subset_digest(inputs["selection"])}


def build(b: Build) -> dict:
    """Trains a LoRA on the selection's subset; writes the adapter."""
    recipe, selection = b.recipe, b.inputs["selection"]
    tok = load_tokenizer(recipe.model)
    pool_items, _ = tokenize_all(tok, load_split(b.inputs["data"], "train"), recipe.model.max_seq_length)
    rows = load_selection_table(selection)["train_idx"].tolist()  # the subset's pool rows, in subset order
    last = train_on_pool_rows(b, pool_items, rows, recipe.finetune, recipe.seed, progress_bar=True)
    return {
        "n_train": len(rows),
        **selected_by(selection).model_dump(),  # method and budget: the label of this fine-tune and its evaluation
        "steps": last["step"],
    }


def label(inputs, params) -> str:
    return selected_by(inputs["selection"]).label


STEP = Step(
    name="finetune",
    doc="Fine-tunes a LoRA on one of a run's selections.",
    # the data: the pool whose training trunk the fine-tune reads (the subset's content is the identity)
    inputs=(Input("selection", labelled=True, hashed=False), Input("data", hashed=False)),
    sections=("model", "lora", "finetune", "seed"),
    identity=subset,
    pool="gpu",
    label=label,
    per="branch",
    build=build,
)
