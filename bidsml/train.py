"""LoRA training: warmup (one checkpoint per epoch) and fine-tuning on a selection.

A checkpoint describes itself: adapter weights (peft folder), the AdamW
state keyed by parameter NAME (exp_avg m, exp_avg_sq v; index-keyed states
broke LESS's code, issues #4/#10/#44), the epoch's mean learning rate and the
step count. A killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from bidsml.config import LoraConfig, ModelConfig, TrainConfig
from bidsml.data import Tokenized, collate
from bidsml.model import load_base_model, load_tokenizer
from bidsml.train_trunk import TRUNK_CHECK_TOLERANCE, TrainTrunk, check_trunk, top_loss, training_layer

OPTIMIZER_FILE = "optimizer_state.pt"  # {param name: {"exp_avg", "exp_avg_sq"}}
TRAINER_FILE = "trainer_state.pt"  # full optimizer/scheduler/RNG state, for resume
CHECKPOINT_META = "checkpoint.json"


def add_lora(model, cfg: LoraConfig, seed: int):
    """Returns a peft model with a fresh, seeded LoRA adapter on `cfg.target_modules`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(seed)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=list(cfg.layers) if cfg.layers else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def linear_schedule(step: int, total: int, warmup_ratio: float) -> float:
    """Returns the LR multiplier at `step`: linear warmup, then linear decay to 0."""
    warm = math.ceil(total * warmup_ratio)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Returns the seeded shuffle of example indices for one epoch."""
    order = list(range(n))
    random.Random(seed * 1000003 + epoch).shuffle(order)
    return order


def optimizer_record(train_cfg: TrainConfig) -> dict:
    """Returns the AdamW hyperparameters as recorded in every checkpoint."""
    return {
        "name": "adamw",
        "betas": [train_cfg.adam_beta1, train_cfg.adam_beta2],
        "eps": train_cfg.adam_eps,
        "weight_decay": train_cfg.weight_decay,
    }


def canonicalize_adapter_config(folder: Path) -> None:
    """Rewrites peft's adapter_config.json with sorted lists and keys.

    peft writes `target_modules` from a set, whose order follows Python's
    per-process hash seed: the same adapter would get a different file (and
    every downstream artifact a new identity) in every process.
    """
    path = Path(folder) / "adapter_config.json"
    cfg = json.loads(path.read_text())
    for key in ("target_modules", "layers_to_transform", "modules_to_save"):
        if isinstance(cfg.get(key), list):
            cfg[key] = sorted(cfg[key])
    cfg["base_model_name_or_path"] = None  # a local path: differs between machines, carries no content
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def finished_epochs(out_dir: Path) -> list[int]:
    """Returns the epochs whose checkpoint is complete in `out_dir`."""
    done = []
    for meta in sorted(out_dir.glob(f"epoch_*/{CHECKPOINT_META}")):
        done.append(json.loads(meta.read_text())["epoch"])
    return sorted(done)


def train_lora(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    train_cfg: TrainConfig,
    examples: list[Tokenized],
    out_dir: Path,
    seed: int,
    save_every_epoch: bool = True,
    progress: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    trunk: TrainTrunk | None = None,
    trunk_rows: list[int] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[dict]:
    """Trains a fresh LoRA on `examples` and returns one dict per saved checkpoint.

    Checkpoints go to ``out_dir/epoch_<e>/`` (every epoch with
    `save_every_epoch`, else only the last). Each dict has ``epoch``, ``step``,
    ``mean_lr`` and ``path``. `on_step(step, total_steps, loss)` is called after every optimizer step.

    `trunk` (states entering the first adapted layer; example i is its row `trunk_rows[i]`): only the adapted
    layers run (bidsml/train_trunk.py). It is checked on the first batch against a full pass and dropped, with
    `on_warning`, when it disagrees.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(model_cfg)
    model = add_lora(load_base_model(model_cfg), lora_cfg, seed)
    device = next(model.parameters()).device
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = optimizer_record(train_cfg)
    opt = torch.optim.AdamW(
        [p for _, p in named],
        lr=train_cfg.lr,
        betas=tuple(optimizer["betas"]),
        eps=optimizer["eps"],
        weight_decay=optimizer["weight_decay"],
    )
    steps_per_epoch = math.ceil(len(examples) / train_cfg.batch_size)
    total = steps_per_epoch * train_cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, total, train_cfg.warmup_ratio))

    if trunk is not None:
        trunk = _checked_trunk(model, lora_cfg, trunk, trunk_rows, examples, train_cfg, seed, tok, on_warning)
    start_epoch = 0
    done = finished_epochs(out_dir)
    if done:  # resume after the last finished epoch
        last = out_dir / f"epoch_{done[-1]}"
        state = torch.load(last / TRAINER_FILE, weights_only=False)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(last / "adapter_model.safetensors"))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = done[-1] + 1

    results = [json.loads((out_dir / f"epoch_{e}" / CHECKPOINT_META).read_text()) for e in done]
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, train_cfg.epochs):
        model.train()
        order = epoch_order(len(examples), seed, epoch)
        lrs = []
        bar = tqdm(range(steps_per_epoch), desc=f"train epoch {epoch + 1}/{train_cfg.epochs}", disable=not progress)
        for b in bar:
            rows = order[b * train_cfg.batch_size : (b + 1) * train_cfg.batch_size]
            ids, mask, labels = (t.to(device) for t in collate([examples[i] for i in rows], tok.pad_token_id))
            lrs.append(opt.param_groups[0]["lr"])
            if trunk is not None:
                h = trunk.batch([trunk_rows[i] for i in rows], device, next(model.parameters()).dtype)
                loss = top_loss(model, trunk.layer, h, mask, labels)
            else:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if on_step is not None:
                on_step(step, total, loss.item())
        model.eval()
        last_epoch = epoch == train_cfg.epochs - 1
        if save_every_epoch or last_epoch:
            ck = out_dir / f"epoch_{epoch}"
            model.save_pretrained(ck)
            canonicalize_adapter_config(ck)
            states = {n: {k: opt.state[p][k].detach().cpu() for k in ("exp_avg", "exp_avg_sq")} for n, p in named}
            torch.save(states, ck / OPTIMIZER_FILE)
            torch.save(
                {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state()},
                ck / TRAINER_FILE,
            )
            meta = {
                "epoch": epoch,
                "step": step,
                "mean_lr": sum(lrs) / len(lrs),
                "path": ck.name,
                "optimizer": optimizer,  # the features' Adam transform reads these back
            }
            (ck / CHECKPOINT_META).write_text(json.dumps(meta))  # written last: marks the checkpoint complete
            results.append(meta)
    return results


def _checked_trunk(model, lora_cfg, trunk, trunk_rows, examples, train_cfg, seed, tok, on_warning):
    """Returns the trunk when it serves this model (its layer, and the first batch equal to a full pass), else None."""
    warn = on_warning or (lambda message: None)
    layer = training_layer(model, lora_cfg.layers)
    if layer != trunk.layer or trunk_rows is None or len(trunk_rows) != len(examples):
        warn(f"trunk of layer {trunk.layer} does not serve this model (its first adapted layer: {layer}): full passes")
        return None
    rows = epoch_order(len(examples), seed, 0)[: train_cfg.batch_size]
    device = next(model.parameters()).device
    states = trunk.batch([trunk_rows[i] for i in rows], device, next(model.parameters()).dtype)
    diff = check_trunk(model, trunk.layer, [examples[i] for i in rows], tok.pad_token_id, states)
    if not diff <= TRUNK_CHECK_TOLERANCE:
        warn(
            f"the trunk path's loss differs from a full pass by {diff:.2e} (> {TRUNK_CHECK_TOLERANCE}) on the first "
            "batch: training with full passes"
        )
        return None
    return trunk


def checkpoint_weights(mean_lrs: list[float]) -> list[float]:
    """Returns LESS's checkpoint weights w_c = mean_lr_c / sum(mean_lr)."""
    total = sum(mean_lrs)
    return [lr / total for lr in mean_lrs]
