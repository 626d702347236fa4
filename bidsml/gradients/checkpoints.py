"""Warmup checkpoints read back for gradient features: the LoRA model and each checkpoint's weights and Adam state.

`ckpts` are the warmup artifact's checkpoint dicts (storage/checkpoints.py `load_checkpoints`), each with its
folder `path` relative to the warmup's folder `warm_path`.
"""

from __future__ import annotations

import torch

from pathlib import Path

from bidsml.config import FeaturesConfig, ModelConfig
from bidsml.errors import FeatureError
from bidsml.gradients.features import AdamTransform, CheckpointState, lora_linears, resolve_precision
from bidsml.model import load_base_model, load_lora
from bidsml.training.lora import OPTIMIZER_FILE


def feature_model(model_cfg: ModelConfig, features: FeaturesConfig, warm_path: Path, ckpts: list[dict]):
    """Returns (model with the warmup LoRA, trainable LoRA only; each checkpoint's state; forward precision)."""
    model = load_lora(load_base_model(model_cfg), Path(warm_path) / ckpts[0]["path"])
    model.eval()
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    precision = resolve_precision(features.precision, next(model.parameters()).device)
    return model, checkpoint_states(model, warm_path, ckpts, features.eps_inside_sqrt), precision


def checkpoint_states(model, warm_path: Path, ckpts: list[dict], eps_inside_sqrt: bool) -> list[CheckpointState]:
    """Returns every checkpoint's LoRA weights (on the model's device, keyed like the model) and Adam transform."""
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    params = dict(lora_linears(model))
    states = []
    for ck in ckpts:
        adapter = Path(warm_path) / ck["path"]
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
