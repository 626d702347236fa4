"""The evaluation's trunk states for a model and its scored items: which file holds them, and what became of them."""

from __future__ import annotations

from pathlib import Path

from bidsml.evaluation.benchmarks import BenchItem
from bidsml.evaluation.trunk import TrunkStates, trunk_layer
from storage.speed_caches import machine_key
from storage.trunk_states import items_digest, load_trunk, save_trunk, trunk_bytes, trunk_path


def shared_trunk(recipe, run_root: Path, model, items: list[BenchItem]) -> tuple[TrunkStates | None, Path | None]:
    """Returns the trunk states to score with (saved ones when this model shares them, else empty) and their file.

    (None, None) when the model shares no layers with the base model (LoRA on layer 0, or no `lora.layers`).
    """
    from storage.identity import code_identity, model_identity

    layers = recipe.lora.layers
    layer = trunk_layer(model, min(layers) if layers else None)
    if layer is None:
        return None, None
    ec = recipe.evaluation
    key = {
        "model": model_identity(recipe.model),
        "layer": layer,
        "items": items_digest(
            [
                (it.id, it.prompt, it.gold_text, str(it.messages), str(it.choice_texts))
                + ((str(it.choice_prompts),) if it.choice_prompts else ())  # keys of items without them unchanged
                for it in items
            ]
        ),
        "max_length": ec.max_length,
        "batch_size": ec.batch_size,
        "dtype": str(next(model.parameters()).dtype),
        "device": next(model.parameters()).device.type,
        **machine_key(),
        "code": code_identity("bidsml.evaluation.trunk"),
    }
    path = trunk_path(run_root, key)
    return load_trunk(path, layer) or TrunkStates(layer=layer), path


def keep_trunk(trunk: TrunkStates | None, path: Path | None, log) -> str:
    """Saves newly recorded trunk states; returns (and logs) what happened to them, for the step summary."""
    if trunk is None:
        return "not shared (the model adapts layer 0 or every layer)"
    if not trunk.valid:
        note = "not used: the trunk path did not reproduce a full pass on this model (full passes instead)"
        log(note, warning=True)
        return note
    size = f"{trunk_bytes(trunk) / 2**20:.0f} MiB"
    if trunk.recorded:
        save_trunk(path, trunk)
        note = f"recorded layers 0-{trunk.layer - 1} once ({size}), saved for the other models: {path.name}"
    else:
        note = f"reused layers 0-{trunk.layer - 1} states ({size}) from {path.name}: only the top layers ran"
    log(f"trunk states: {note}")
    return note
