"""Step `prune`: the base model pruned (magnitude or Wanda, unstructured), saved as a model folder.

Its identity is the base model's files, the method, the sparsity and, for
Wanda, the calibration rows (the data artifact's digest and the sample's
seed). The folder (config, safetensors, tokenizer) loads like any model: a
recipe with a `prune` section runs every later step on it, and PASER's
`degradation` step compares it with the original. The summary gives the
sparsity reached and the mean response NLL of held-out pool rows before and
after pruning.
"""

from __future__ import annotations

import numpy as np

from bidsml.data.examples import collate, tokenize_all
from bidsml.model import load_base_model, load_tokenizer
from bidsml.pruning.prune import magnitude_prune, sparsity_of, wanda_prune
from bidsml.represent import response_nll
from storage.datasets import SPLIT_FILES, load_split
from storage.models import model_folder
from storage.refs import file_digest_in
from tasks.step import Build, Input, Step

HELD_OUT = 64  # pool rows (not calibration rows) whose NLL the summary reports


def calibration(recipe, inputs, params) -> dict:
    """Wanda's calibration rows are part of the identity: the pool file's content (not the data artifact's digest,
    which a seed's validation draw changes) and the sample's size and seed; magnitude reads none."""
    p = recipe.prune
    if p is None or p.method != "wanda":
        return {}
    pool = file_digest_in(inputs["data"], SPLIT_FILES["train"])
    return {"calibration": {"pool": pool, "rows": p.calibration_rows, "seed": p.seed}}


def build(b: Build) -> dict:
    """Prunes the base model's decoder linears and saves the pruned model folder with the tokenizer."""
    recipe, p = b.recipe, b.recipe.prune
    tok = load_tokenizer(recipe.model)
    model = load_base_model(recipe.model)
    pool, _ = tokenize_all(tok, load_split(b.inputs["data"], "train"), recipe.model.max_seq_length)
    order = np.random.default_rng(p.seed).permutation(len(pool))
    calib, held = order[: p.calibration_rows], order[p.calibration_rows : p.calibration_rows + HELD_OUT]
    held_items = [pool[i] for i in held]
    nll_before = float(response_nll(model, held_items, tok.pad_token_id, recipe.model.max_seq_length * 8).mean())
    if p.method == "magnitude":
        magnitude_prune(model, p.sparsity)
    else:
        device = next(model.parameters()).device
        batches = []
        for s in range(0, len(calib), 8):
            ids, mask, _ = collate([pool[i] for i in calib[s : s + 8]], tok.pad_token_id)
            batches.append((ids.to(device), mask.to(device)))
        progress = b.progress("layers")
        wanda_prune(model, p.sparsity, batches, on_layer=progress.update)
    nll_after = float(response_nll(model, held_items, tok.pad_token_id, recipe.model.max_seq_length * 8).mean())
    folder = model_folder(b.work)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return {
        "method": p.method,
        "sparsity": p.sparsity,
        "sparsity_reached": round(sparsity_of(model), 6),
        "calibration_rows": int(len(calib)) if p.method == "wanda" else 0,
        "held_out_rows": len(held_items),
        "held_out_nll_original": round(nll_before, 5),
        "held_out_nll_pruned": round(nll_after, 5),
    }


STEP = Step(
    name="prune",
    doc="Prunes the base model (magnitude or Wanda, unstructured) into a model folder the later steps load.",
    inputs=(Input("data", hashed=False),),  # only Wanda's calibration rows count: see `calibration`
    sections=("model", "prune"),
    identity=calibration,
    run_if=lambda recipe: recipe.prune is not None,
    pool="gpu",
    build=build,
)
