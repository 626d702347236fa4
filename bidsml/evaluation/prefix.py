"""Shared-prefix reuse: prompts that start with the same few shots encode them once (one key/value cache)."""

from __future__ import annotations

import torch

from bidsml.evaluation.model_calls import _cache_kw, _causal_lm

PREFIX_MIN_TOKENS = 64  # items sharing at least this many prompt tokens reuse one key/value cache of them


def prefix_groups(prompts: list[list[int]], min_shared: int = PREFIX_MIN_TOKENS) -> list[tuple[int, list[int]]]:
    """Returns (shared prefix length, item indices) groups covering every prompt once.

    Prompts are sorted by their tokens, so prompts with a long common start
    are neighbours; a run of neighbours sharing >= `min_shared` tokens is one
    group, its prefix the run's common start, cut so that every item keeps at
    least its last prompt token (whose logits score the continuation).
    Prompts with nothing long in common form groups with prefix length 0.
    """
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    groups: list[tuple[int, list[int]]] = []
    loose: list[int] = []

    def close(run: list[int], shared: int) -> None:
        shared = min([shared] + [len(prompts[i]) - 1 for i in run])
        if len(run) > 1 and shared >= min_shared:
            groups.append((shared, sorted(run)))
        else:
            loose.extend(run)

    run, shared = [order[0]] if order else [], 0
    for i in order[1:]:
        common = _common_length(prompts[run[-1]], prompts[i])
        new_shared = common if len(run) == 1 else min(shared, common)
        if new_shared >= min_shared:
            run.append(i)
            shared = new_shared
        else:
            close(run, shared)
            run, shared = [i], 0
    if run:
        close(run, shared if len(run) > 1 else 0)
    if loose:
        groups.append((0, sorted(loose)))
    return groups


def _common_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def _prefix_cache(model, prefix: list[int], device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Returns the per-layer (key, value) tensors (1, heads, P, d) of a prefix."""
    from transformers import DynamicCache

    cache = DynamicCache()
    _causal_lm(model).model(input_ids=torch.tensor([prefix], device=device), **_cache_kw(model, cache), use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _expand_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """Returns a fresh cache holding the prefix for `batch` rows (views: the forward appends, never writes in place)."""
    from transformers import DynamicCache

    return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv])


def _suffix_ids(encoded, idx, shared, pad) -> torch.Tensor:
    """Returns the right-padded (B, L) token ids of the items' tokens after the shared prefix."""
    seqs = [(encoded[i][0] + encoded[i][1])[shared:] for i in idx]
    ids = torch.full((len(idx), max(map(len, seqs))), pad, dtype=torch.long)
    for b, seq in enumerate(seqs):
        ids[b, : len(seq)] = torch.tensor(seq)
    return ids
