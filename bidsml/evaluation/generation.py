"""Greedy generation in left-padded batches with a KV cache and stop sequences."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from bidsml.data.examples import length_batches


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    stop: list[str],
    max_new_tokens: int,
    batch_size: int,
    max_len: int,
    desc: str = "generate",
) -> list[str]:
    """Returns greedy continuations, cut at the first stop sequence: batched, left-padded, with a KV cache.

    Prompts are truncated from the left to leave room for `max_new_tokens`;
    batches are length-sorted with padding bounded to ~20%.
    """
    device = next(model.parameters()).device
    keep = max(1, max_len - max_new_tokens)
    encoded = [_tokens(tokenizer, p)[-keep:] for p in prompts]
    batches = list(length_batches([len(e) for e in encoded], batch_size * max_len, batch_size))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    for idx in tqdm(batches, desc=desc, leave=False):
        L = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), L), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, i in enumerate(idx):
            ids[b, L - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[b, L - len(encoded[i]) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            stop_strings=stop or None,
            tokenizer=tokenizer,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for b, i in enumerate(idx):
            text = tokenizer.decode(gen[b, L:], skip_special_tokens=True)
            out[i] = cut_at_stop(text, stop)
    return out


def cut_at_stop(text: str, stop: list[str]) -> str:
    """Returns text up to the first stop sequence."""
    cut = len(text)
    for s in stop:
        k = text.find(s)
        if k >= 0:
            cut = min(cut, k)
    return text[:cut]
