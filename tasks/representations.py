"""Step `representations` (for rds, rds-plus, kmq, mig): pooled last hidden states, the quality proxy and, when the
sentence encoder's package is installed, its embedding of each example's instruction (what kmq and mig cluster)."""

from __future__ import annotations

from bidsml.config import FeaturesConfig
from bidsml.data import tokenize_all
from bidsml.model import load_base_model, load_tokenizer
from bidsml.represent import pooled_states
from bidsml.selectors import get_selector
from bidsml.sentence import ENCODER, encoder_version, sentence_embeddings
from tasks.step import Build, Input, Step
from storage.datasets import SPLIT_FILES, load_split
from storage.representations import save_representations


def encoder(recipe, inputs, params) -> dict:
    """Returns the sentence encoder the build will use (None: not installed): it decides what the files hold."""
    return {"sentence_encoder": encoder_version()}


def instruction(ex) -> str:
    """Returns an example's instruction: its user turns (what a sentence encoder embeds for kmq and mig)."""
    return "\n".join(m.content for m in ex.messages if m.role == "user")


def build(b: Build) -> dict:
    """Computes normalised pooled hidden states of the base model (mean and position-weighted), the mean
    response-token log-probability (the quality proxy) and the sentence encoder's instruction embedding per split."""
    recipe = b.recipe
    tok = load_tokenizer(recipe.model)
    model = load_base_model(recipe.model)
    use_encoder = encoder_version() is not None
    for split in SPLIT_FILES:
        examples = load_split(b.inputs["data"], split)
        items, _ = tokenize_all(tok, examples, recipe.model.max_seq_length)
        progress = b.progress(f"{split} rows")
        states = pooled_states(model, items, tok.pad_token_id, recipe.features.max_tokens, on_rows=progress.update)
        pooled = {p: v.numpy() for p, v in states.items()}
        if use_encoder:
            pooled["sentence"] = sentence_embeddings([instruction(e) for e in examples])
        save_representations(b.work, split, pooled)
    if not use_encoder:
        b.log(
            f"sentence encoder ({ENCODER}) not installed: kmq and mig cluster the base model's hidden states "
            "(a proxy for the papers' sentence encoders)",
            warning=True,
        )
    return {
        "hidden_size": int(pooled["mean"].shape[1]),
        "poolings": sorted(pooled),
        "sentence_encoder": encoder_version(),
    }


STEP = Step(
    name="representations",
    doc="Pooled hidden states and quality proxy of pool and validation examples (rds, rds-plus, kmq, mig).",
    inputs=(Input("data"),),
    sections=("model", "features"),
    # only the micro-batch budget is read, and batching changes no state
    ignore={"features": tuple(FeaturesConfig.model_fields)},
    identity=encoder,
    run_if=lambda recipe: any("representations" in get_selector(m).needs for m in recipe.selection.methods),
    pool="gpu",
    build=build,
)
