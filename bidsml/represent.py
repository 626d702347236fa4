"""Representations for the RDS baseline: mean-pooled last hidden states, L2-normalised."""

from __future__ import annotations

import torch

from bidsml.data import Tokenized, collate, iter_batches


@torch.no_grad()
def mean_pooled_states(model, items: list[Tokenized], pad_id: int, max_tokens: int) -> torch.Tensor:
    """Returns (N, H) float32 L2-normalised means of the last hidden state over each example's tokens."""
    device = next(model.parameters()).device
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = torch.zeros(len(items), causal_lm.config.hidden_size)
    for idx in iter_batches(items, max_tokens):
        ids, mask, _ = (t.to(device) for t in collate([items[i] for i in idx], pad_id))
        h = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (B, T, H)
        m = mask.unsqueeze(-1).float()
        out[idx] = ((h * m).sum(1) / m.sum(1)).cpu()
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-30)
