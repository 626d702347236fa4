"""Training an adapter inside a step: the pool's training trunk (computed once, kept under the run root) and a
LoRA trained on some of the pool's rows. Not a step: finetune, tune, probe and warmup build with it, and it counts
in their identities (storage/identity.py's SHARED_STEP_MODULES)."""

from __future__ import annotations

import hashlib
import json

from bidsml.config import TrainConfig
from bidsml.data.examples import Tokenized
from bidsml.training.lora import TrainSettings, TrunkRows, train_adapter
from bidsml.training.trunk import TrainTrunk, compute_trunk
from storage.checkpoints import adapter_path
from storage.train_trunk import load_train_trunk, save_train_trunk, train_trunk_path
from storage.speed_caches import machine_key


def pool_trunk(
    model_cfg,
    layers: tuple[int, ...] | None,
    items: list[Tokenized],
    run_root,
    pad_id: int,
    max_tokens: int,
    on_rows=None,
) -> TrainTrunk | None:
    """Returns the trunk of `items` (saved under run_root/trunk, computed on first use), or None without one.

    None when LoRA adapts every layer (no `lora.layers`, or layer 0).
    """
    import torch

    from bidsml.model import load_base_model
    from storage.identity import code_identity, model_identity

    if not layers or min(layers) == 0:
        return None
    layer = min(layers)
    key = {
        "model": model_identity(model_cfg),
        "layer": layer,
        "items": hashlib.sha256(json.dumps([t.input_ids for t in items]).encode()).hexdigest(),
        "dtype": model_cfg.dtype,
        "device": model_cfg.device,
        **machine_key(),
        "code": code_identity("bidsml.training.trunk"),
    }
    path = train_trunk_path(run_root, key)
    saved = load_train_trunk(path, layer)
    if saved is not None:
        return saved
    model = load_base_model(model_cfg).eval()
    if layer >= len(model.model.layers):
        return None
    with torch.no_grad():
        states, offsets = compute_trunk(model, layer, items, pad_id, max_tokens, on_rows, memmap_dir=path.parent)
    save_train_trunk(path, states, offsets)
    del model, states
    return load_train_trunk(path, layer)


def training_trunk(recipe, pool_items: list[Tokenized], run_root, progress=None) -> TrainTrunk | None:
    """Returns the training trunk of `pool_items` for the recipe's model and `lora.layers` (None: LoRA on every
    layer). `progress()` makes the progress bar, only when the states are computed."""
    from bidsml.model import load_tokenizer

    if not recipe.lora.layers or min(recipe.lora.layers) == 0:
        return None
    tok = load_tokenizer(recipe.model)
    bar = {}

    def on_rows(done: int, n: int) -> None:
        if progress is not None:
            bar.setdefault("bar", progress()).update(done, n)

    return pool_trunk(recipe.model, recipe.lora.layers, pool_items, run_root, tok.pad_token_id, 4096, on_rows)


def train_on_pool_rows(
    b, pool_items: list[Tokenized], rows: list[int], train: TrainConfig, seed: int, progress_bar: bool = False
) -> dict:
    """Trains the recipe's LoRA on pool rows `rows` (in that order) from the pool's training trunk and writes the
    final adapter to the step's `adapter/`; returns the last checkpoint's dict (epoch, step, mean_lr)."""
    recipe = b.recipe
    trunk = training_trunk(recipe, pool_items, b.run_root, lambda: b.progress("pool trunk states (rows)"))
    progress = b.progress("training steps")
    return train_adapter(
        TrainSettings(recipe.model, recipe.lora, train, seed, progress_bar=progress_bar),
        [pool_items[i] for i in rows],
        adapter_path(b.work),
        trunk=TrunkRows(trunk, [int(i) for i in rows]) if trunk is not None else None,
        on_step=lambda s, t, loss: progress.update(s, t, loss=loss),
        on_warning=lambda m: b.log(m, warning=True),
    )
