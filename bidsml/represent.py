"""Representations for the RDS baselines: pooled last hidden states of the base model, L2-normalised.

- `mean`: the mean over an example's tokens (RDS);
- `weighted`: position-weighted mean, token t of T weighing t / (1 + ... + T) (RDS+).
"""

from __future__ import annotations

import torch

from bidsml.data import Tokenized, collate, iter_batches

POOLINGS = ("mean", "weighted")


@torch.no_grad()
def pooled_states(model, items: list[Tokenized], pad_id: int, max_tokens: int) -> dict[str, torch.Tensor]:
    """Returns {pooling: (N, H) float32 L2-normalised pooled last hidden states} for POOLINGS."""
    device = next(model.parameters()).device
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    H = causal_lm.config.hidden_size
    out = {p: torch.zeros(len(items), H) for p in POOLINGS}
    for idx in iter_batches(items, max_tokens):
        ids, mask, _ = (t.to(device) for t in collate([items[i] for i in idx], pad_id))
        h = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (B, T, H)
        m = mask.float()  # (B, T), right-padded
        pos = m.cumsum(1) * m  # 1..T_i on real tokens, 0 on padding
        for name, w in (("mean", m), ("weighted", pos)):
            w = w / w.sum(1, keepdim=True)
            out[name][idx] = torch.einsum("bt,bth->bh", w, h).cpu()
    return {p: v / v.norm(dim=1, keepdim=True).clamp_min(1e-30) for p, v in out.items()}
