"""Step 2: per-example gradient features for pool (Adam) and validation (SGD), per checkpoint, in Zarr."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from prefect import task
from tqdm.auto import tqdm

from bidsml.config import Recipe
from bidsml.data import tokenize_all
from bidsml.errors import FeatureError
from bidsml.features import (
    AdamTransform,
    CheckpointState,
    compute_features_checkpoints,
    lora_linears,
    resolve_precision,
)
from bidsml.model import load_base_model, load_lora, load_tokenizer, resolve_device
from bidsml.projection import make_projector
from bidsml.train import OPTIMIZER_FILE
from storage.checkpoints import load_checkpoints
from storage.datasets import SPLIT_FILES, load_split
from storage.gradients import save_examples_meta, write_chunks_checkpoints
from storage.refs import ArtifactRef, Plan, materialize
from tasks.common import ArtifactCachePolicy, Progress, code_version, model_inputs, publish, ref_inputs, run_root

CODE = code_version(__name__)


def plan_features(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="features",
        inputs={
            **ref_inputs(data=data, warmup=warm),
            **model_inputs(recipe),
            # batching does not change features; the forward precision does (resolved for the device)
            "features": {
                **recipe.features.model_dump(mode="json", exclude={"max_tokens"}),
                "precision": resolve_precision(recipe.features.precision, resolve_device(recipe.model)),
            },
            "code": CODE,
        },
    )


def _checkpoint_states(model, warm: ArtifactRef, ckpts: list[dict], eps_inside_sqrt: bool) -> list[CheckpointState]:
    """Returns every checkpoint's LoRA weights (on the model's device, keyed like the model) and Adam transform."""
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    params = dict(lora_linears(model))
    states = []
    for ck in ckpts:
        adapter = warm.path / ck["path"]
        saved = load_file(str(adapter / "adapter_model.safetensors"))
        weights = {}
        for name in params:
            # peft saves "...lora_A.weight" for the adapter the model calls "...lora_A.default.weight"
            key = name.replace(".default.", ".")
            if key not in saved:
                raise FeatureError(f"{adapter}: no weights for LoRA parameter {key!r}")
            weights[name] = saved[key].to(device=device, dtype=params[name].weight.dtype)
        opt = torch.load(adapter / OPTIMIZER_FILE, weights_only=True)
        hp = ck.get("optimizer")
        if not hp or hp.get("name") != "adamw":
            raise FeatureError(f"{adapter}: the checkpoint records no AdamW hyperparameters; rerun the warmup step")
        transform = AdamTransform(
            opt, beta1=hp["betas"][0], beta2=hp["betas"][1], eps=hp["eps"], eps_inside_sqrt=eps_inside_sqrt
        )
        states.append(CheckpointState(weights, transform))
    return states


@task(cache_policy=ArtifactCachePolicy(plan=plan_features), persist_result=True)
def featurize(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Computes projected, normalised gradient features; resumes chunk by chunk after a kill."""
    started = time.time()
    fc = recipe.features

    def build(work: Path) -> dict:
        tok = load_tokenizer(recipe.model)
        ckpts = load_checkpoints(warm)
        splits = {}
        for split in SPLIT_FILES:
            items, _ = tokenize_all(tok, load_split(data, split), recipe.model.max_seq_length)
            splits[split] = items
        model = load_lora(load_base_model(recipe.model), warm.path / ckpts[0]["path"])
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        precision = resolve_precision(fc.precision, next(model.parameters()).device)
        shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
        projector = make_projector(fc.projector, fc.proj_dim, fc.proj_seed, shapes)
        states = _checkpoint_states(model, warm, ckpts, fc.eps_inside_sqrt)
        total = sum((len(v) + fc.chunk_rows - 1) // fc.chunk_rows for v in splits.values())
        progress = Progress("features-progress", "gradient feature chunks")
        bar = tqdm(total=total, desc=f"feature chunks ({len(ckpts)} checkpoints per pass)")
        done = 0
        for split, items in splits.items():

            def compute(start, stop, todo, items=items, split=split):
                # validation gradients are plain ("sgd"): no Adam transform
                run = [
                    CheckpointState(states[c].weights, states[c].transform if split == "train" else None) for c in todo
                ]
                out = compute_features_checkpoints(
                    model, items[start:stop], projector, tok.pad_token_id, run, fc.max_tokens, precision
                )
                return {c: (f.numpy(), n.numpy()) for c, (f, n) in zip(todo, out)}

            def on_chunk(i, n_chunks, skipped):
                nonlocal done
                done += 1
                bar.update(1)
                progress.update(done, total)

            write_chunks_checkpoints(
                work, split, list(range(len(ckpts))), len(items), fc.proj_dim, fc.chunk_rows, compute, on_chunk
            )
        bar.close()
        meta = {
            split: {"ids": [t.id for t in items], "n_tokens": [len(t.input_ids) for t in items]}
            for split, items in splits.items()
        }
        save_examples_meta(work, meta)
        return {
            "n_train": len(splits["train"]),
            "n_val": len(splits["val"]),
            "checkpoints": len(ckpts),
            "dim": fc.proj_dim,
            "precision": precision,
        }

    ref = materialize(plan_features(recipe, data, warm), build, force=refresh)
    return publish(ref, "featurize", {"features": fc.model_dump()}, [data, warm], started)
