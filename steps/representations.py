"""Step `representations` (for rds, rds-plus, kmq, mig): pooled last hidden states and the quality proxy."""

from __future__ import annotations

from bidsml.config import FeaturesConfig
from bidsml.data import tokenize_all
from bidsml.model import load_base_model, load_tokenizer
from bidsml.represent import pooled_states
from bidsml.selectors import get_selector
from steps.step import Build, Input, Step
from storage.datasets import SPLIT_FILES, load_split
from storage.representations import save_representations


def build(b: Build) -> dict:
    """Computes normalised pooled hidden states of the base model (mean and position-weighted) and the mean
    response-token log-probability (the quality proxy) per split."""
    recipe = b.recipe
    tok = load_tokenizer(recipe.model)
    model = load_base_model(recipe.model)
    for split in SPLIT_FILES:
        items, _ = tokenize_all(tok, load_split(b.inputs["data"], split), recipe.model.max_seq_length)
        pooled = pooled_states(model, items, tok.pad_token_id, recipe.features.max_tokens)
        save_representations(b.work, split, {p: v.numpy() for p, v in pooled.items()})
    return {"hidden_size": int(pooled["mean"].shape[1]), "poolings": sorted(pooled)}


STEP = Step(
    name="representations",
    doc="Pooled hidden states and quality proxy of pool and validation examples (rds, rds-plus, kmq, mig).",
    inputs=(Input("data"),),
    sections=("model", "features"),
    # only the micro-batch budget is read, and batching changes no state
    ignore={"features": tuple(FeaturesConfig.model_fields)},
    run_if=lambda recipe: any("representations" in get_selector(m).needs for m in recipe.selection.methods),
    pool="gpu",
    build=build,
)
