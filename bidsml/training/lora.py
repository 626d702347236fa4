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
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from bidsml.config import LoraConfig, ModelConfig, TrainConfig
from bidsml.data.examples import Tokenized, collate
from bidsml.model import load_base_model, load_tokenizer
from bidsml.training.trunk import TRUNK_CHECK_TOLERANCE, TrainTrunk, check_trunk, top_loss, training_layer

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
    """Rewrites peft's adapter_config.json with sorted lists and keys, without the local path of the base model.

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
    # peft's model card: boilerplate whose `base_model` is that local path (a pruned model's lies in the run root,
    # so the same adapter trained under two run roots would differ)
    (Path(folder) / "README.md").unlink(missing_ok=True)


def finished_epochs(out_dir: Path) -> list[int]:
    """Returns the epochs whose checkpoint is complete in `out_dir`."""
    done = []
    for meta in sorted(out_dir.glob(f"epoch_*/{CHECKPOINT_META}")):
        done.append(json.loads(meta.read_text())["epoch"])
    return sorted(done)


@dataclass(frozen=True)
class TrainSettings:
    """What one LoRA training run is: the model, the adapter, the optimizer schedule and the seed.

    `save_every_epoch`: a checkpoint per epoch (the warmup's, LESS's features read each), else only the last.
    `progress_bar`: a terminal bar per epoch (steps reported through `on_step` either way).
    """

    model: ModelConfig
    lora: LoraConfig
    train: TrainConfig
    seed: int
    save_every_epoch: bool = True
    progress_bar: bool = True


@dataclass(frozen=True)
class TrunkRows:
    """A training trunk and the trunk row of each training example (example i is row `rows[i]`)."""

    trunk: TrainTrunk
    rows: list[int]


@dataclass
class _Run:
    """The state of one training run: model, optimizer, schedule and where it stands."""

    model: torch.nn.Module
    named: list
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    total: int


def train_lora(
    settings: TrainSettings,
    examples: list[Tokenized],
    out_dir: Path,
    trunk: TrunkRows | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[dict]:
    """Trains a fresh LoRA on `examples` and returns one dict per saved checkpoint.

    Checkpoints go to ``out_dir/epoch_<e>/`` (every epoch with `settings.save_every_epoch`, else only the last).
    Each dict has ``epoch``, ``step``, ``mean_lr`` and ``path``. `on_step(step, total_steps, loss)` is called
    after every optimizer step. A folder holding finished epochs resumes after the last of them.

    `trunk`: only the adapted layers run, from the saved states entering the first of them
    (bidsml/training/trunk.py). It is checked on the first batch against a full pass and dropped, with
    `on_warning`, when it disagrees.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(settings.model)
    run = _adamw(settings, len(examples))
    if trunk is not None:
        trunk = _checked_trunk(run.model, settings, trunk, examples, tok, on_warning)
    done = finished_epochs(out_dir)
    start_epoch = _resume(run, out_dir / f"epoch_{done[-1]}") + 1 if done else 0
    results = [json.loads((out_dir / f"epoch_{e}" / CHECKPOINT_META).read_text()) for e in done]
    step = start_epoch * run.steps_per_epoch
    for epoch in range(start_epoch, settings.train.epochs):
        step, lrs = _train_epoch(run, settings, examples, epoch, step, tok.pad_token_id, trunk, on_step)
        if settings.save_every_epoch or epoch == settings.train.epochs - 1:
            results.append(_save_checkpoint(run, out_dir / f"epoch_{epoch}", epoch, step, lrs, settings.train))
    return results


def train_adapter(
    settings: TrainSettings,
    examples: list[Tokenized],
    adapter_dir: Path,
    trunk: TrunkRows | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> dict:
    """Trains a LoRA and keeps only its final adapter, at `adapter_dir`; returns the last checkpoint's dict.

    Trains in `adapter_dir`'s sibling folder `train/` (resumable there), then moves the last checkpoint.
    """
    work = Path(adapter_dir).parent / "train"
    last = train_lora(replace(settings, save_every_epoch=False), examples, work, trunk, on_step, on_warning)[-1]
    (work / last["path"]).rename(adapter_dir)
    shutil.rmtree(work)
    return last


def _adamw(settings: TrainSettings, n_examples: int) -> _Run:
    """Returns a fresh seeded LoRA on the base model with its AdamW and linear schedule."""
    cfg = settings.train
    model = add_lora(load_base_model(settings.model), settings.lora, settings.seed)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = optimizer_record(cfg)
    opt = torch.optim.AdamW(
        [p for _, p in named],
        lr=cfg.lr,
        betas=tuple(optimizer["betas"]),
        eps=optimizer["eps"],
        weight_decay=optimizer["weight_decay"],
    )
    steps_per_epoch = math.ceil(n_examples / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, total, cfg.warmup_ratio))
    return _Run(model, named, opt, sched, steps_per_epoch, total)


def _resume(run: _Run, last: Path) -> int:
    """Loads a finished epoch's adapter, optimizer, schedule and RNG state; returns that epoch."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = torch.load(last / TRAINER_FILE, weights_only=False)
    set_peft_model_state_dict(run.model, load_file(last / "adapter_model.safetensors"))
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return json.loads((last / CHECKPOINT_META).read_text())["epoch"]


def _train_epoch(run, settings, examples, epoch, step, pad_id, trunk, on_step) -> tuple[int, list[float]]:
    """Runs one epoch of optimizer steps in the seeded order; returns (the step count after it, each step's lr)."""
    model, opt, cfg = run.model, run.opt, settings.train
    device = next(model.parameters()).device
    model.train()
    order = epoch_order(len(examples), settings.seed, epoch)
    lrs = []
    desc = f"train epoch {epoch + 1}/{cfg.epochs}"
    bar = tqdm(range(run.steps_per_epoch), desc=desc, disable=not settings.progress_bar)
    for b in bar:
        rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        ids, mask, labels = (t.to(device) for t in collate([examples[i] for i in rows], pad_id))
        lrs.append(opt.param_groups[0]["lr"])
        if trunk is not None:
            h = trunk.trunk.batch([trunk.rows[i] for i in rows], device, next(model.parameters()).dtype)
            loss = top_loss(model, trunk.trunk.layer, h, mask, labels)
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        run.sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step is not None:
            on_step(step, run.total, loss.item())
    model.eval()
    return step, lrs


def _save_checkpoint(run: _Run, ck: Path, epoch: int, step: int, lrs: list[float], cfg: TrainConfig) -> dict:
    """Writes the adapter, the Adam moments by parameter name and the trainer state; returns the checkpoint's dict
    (its `checkpoint.json`, written last: it marks the checkpoint complete)."""
    run.model.save_pretrained(ck)
    canonicalize_adapter_config(ck)
    states = {n: {k: run.opt.state[p][k].detach().cpu() for k in ("exp_avg", "exp_avg_sq")} for n, p in run.named}
    torch.save(states, ck / OPTIMIZER_FILE)
    torch.save(
        {"optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), "torch_rng": torch.get_rng_state()},
        ck / TRAINER_FILE,
    )
    meta = {
        "epoch": epoch,
        "step": step,
        "mean_lr": sum(lrs) / len(lrs),
        "path": ck.name,
        "optimizer": optimizer_record(cfg),  # the features' Adam transform reads these back
    }
    (ck / CHECKPOINT_META).write_text(json.dumps(meta))
    return meta


def _checked_trunk(model, settings: TrainSettings, trunk: TrunkRows, examples, tok, on_warning) -> TrunkRows | None:
    """Returns the trunk when it serves this model (its layer, and the first batch equal to a full pass), else None."""
    warn = on_warning or (lambda message: None)
    layer = training_layer(model, settings.lora.layers)
    if layer != trunk.trunk.layer or len(trunk.rows) != len(examples):
        warn(
            f"trunk of layer {trunk.trunk.layer} does not serve this model (its first adapted layer: {layer}): "
            "full passes"
        )
        return None
    rows = epoch_order(len(examples), settings.seed, 0)[: settings.train.batch_size]
    device = next(model.parameters()).device
    states = trunk.trunk.batch([trunk.rows[i] for i in rows], device, next(model.parameters()).dtype)
    diff = check_trunk(model, trunk.trunk.layer, [examples[i] for i in rows], tok.pad_token_id, states)
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
