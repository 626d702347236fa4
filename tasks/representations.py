"""Step `representations` (for rds, rds-plus, kmq, mig): pooled last hidden states, the quality proxy and, when the
sentence encoder's package is installed, its embedding of each example's instruction (what kmq and mig cluster)."""

from __future__ import annotations

from bidsml.config import FeaturesConfig
from bidsml.data.examples import tokenize_all
from bidsml.model import load_base_model, load_tokenizer
from bidsml.represent import pooled_states
from bidsml.selectors import get_selector
from bidsml.sentence import ENCODER, encoder_version, sentence_embeddings
from tasks.step import Build, Input, Step
from storage.datasets import SPLIT_FILES, load_split
from storage.identity import function_identity, model_identity
from storage.refs import file_digest_in
from storage.representations import load_split_cache, save_representations, save_split_cache, split_cache_path
from storage.speed_caches import machine_key


def encoder(recipe, inputs, params) -> dict:
    """Returns the sentence encoder the build will use (None: not installed): it decides what the files hold."""
    return {"sentence_encoder": encoder_version()}


def instruction(ex) -> str:
    """Returns an example's instruction: its user turns (what a sentence encoder embeds for kmq and mig)."""
    return "\n".join(m.content for m in ex.messages if m.role == "user")


def split_key(recipe, data, split: str) -> dict:
    """Returns what determines one split's representations: the model, the split file's content, the encoder, the
    code that computes them, the thread count and the library versions."""
    return {
        "model": model_identity(recipe.model),
        "device": recipe.model.device,
        "split": file_digest_in(data, SPLIT_FILES[split]),
        "sentence_encoder": encoder_version(),
        "code": function_identity("tasks.representations", "split_representations"),
        **machine_key(),
    }


def split_representations(recipe, model, tok, examples, use_encoder: bool, on_rows) -> dict:
    """Returns {pooling: array} of one split: pooled hidden states, and the encoder's instruction embeddings."""
    items, _ = tokenize_all(tok, examples, recipe.model.max_seq_length)
    states = pooled_states(model, items, tok.pad_token_id, recipe.features.max_tokens, on_rows=on_rows)
    pooled = {p: v.numpy() for p, v in states.items()}
    if use_encoder:
        pooled["sentence"] = sentence_embeddings([instruction(e) for e in examples])
    return pooled


def build(b: Build) -> dict:
    """Computes normalised pooled hidden states of the base model (mean and position-weighted), the mean
    response-token log-probability (the quality proxy) and the sentence encoder's instruction embedding per split.

    A split whose content was represented before (the pool, in every independent seed) is read from the run
    root's cache: the same arrays, not recomputed."""
    recipe = b.recipe
    tok = load_tokenizer(recipe.model)
    model = None
    use_encoder = encoder_version() is not None
    reused = []
    for split in SPLIT_FILES:
        cache = split_cache_path(b.run_root, split_key(recipe, b.inputs["data"], split))
        pooled = load_split_cache(cache)
        if pooled is None:
            model = model or load_base_model(recipe.model)
            examples = load_split(b.inputs["data"], split)
            progress = b.progress(f"{split} rows")
            pooled = split_representations(recipe, model, tok, examples, use_encoder, progress.update)
            save_split_cache(cache, pooled)
        else:
            reused.append(split)
        save_representations(b.work, split, pooled)
    if not use_encoder:
        b.log(
            f"sentence encoder ({ENCODER}) not installed: kmq and mig cluster the base model's hidden states "
            "(a proxy for the papers' sentence encoders)",
            warning=True,
        )
    if reused:
        b.log(f"representations of {', '.join(reused)} read from {cache.parent} (same content, same model)")
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
