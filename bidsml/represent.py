"""Representations for the representation-based selectors: pooled last hidden states of the base model, and the
quality proxy of the diversity/quality selectors (kmq, mig), from the same forward pass.

- `mean`: the mean over an example's tokens, L2-normalised (RDS);
- `weighted`: position-weighted mean, token t of T weighing t / (1 + ... + T), L2-normalised (RDS+);
- `quality`: the mean log-probability per response token under the base model (<= 0; higher: the response is
  more typical fluent text). A perplexity filter's score, used where the papers use a reward or Deita quality
  model, which this offline project does not have; a pool's own `quality` field replaces it.
"""

from __future__ import annotations

import torch

from bidsml.data.examples import IGNORE_INDEX, Tokenized, collate, iter_batches

POOLINGS = ("mean", "weighted")


def _response_logprob(causal_lm, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Returns (B,) the mean log-probability of each row's label tokens given the last hidden states h (B, T, H)."""
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX  # (B, T-1)
    logits = causal_lm.lm_head(h[:, :-1][keep]).float()  # (n_label_tokens, V): only where a token is predicted
    lp = torch.log_softmax(logits, dim=-1).gather(1, target[keep][:, None])[:, 0]
    per_row = torch.zeros(h.shape[0], dtype=torch.float64, device=h.device)
    per_row.index_add_(0, keep.nonzero()[:, 0], lp.double())
    return per_row / keep.sum(1).clamp_min(1)


@torch.no_grad()
def pooled_states(model, items: list[Tokenized], pad_id: int, max_tokens: int, on_rows=None) -> dict[str, torch.Tensor]:
    """Returns {pooling: (N, H) float32 L2-normalised pooled last hidden states} for POOLINGS, and
    {"quality": (N,) float64 mean response-token log-probability}. `on_rows(done, total)`: progress."""
    device = next(model.parameters()).device
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    H = causal_lm.config.hidden_size
    out = {p: torch.zeros(len(items), H) for p in POOLINGS}
    quality = torch.zeros(len(items), dtype=torch.float64)
    done = 0
    for idx in iter_batches(items, max_tokens):
        ids, mask, labels = (t.to(device) for t in collate([items[i] for i in idx], pad_id))
        h = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        quality[idx] = _response_logprob(causal_lm, h, labels).cpu()
        h = h.float()
        m = mask.float()  # (B, T), right-padded
        pos = m.cumsum(1) * m  # 1..T_i on real tokens, 0 on padding
        for name, w in (("mean", m), ("weighted", pos)):
            w = w / w.sum(1, keepdim=True)
            out[name][idx] = torch.einsum("bt,bth->bh", w, h).cpu()
        done += len(idx)
        if on_rows is not None:
            on_rows(done, len(items))
    pooled = {p: v / v.norm(dim=1, keepdim=True).clamp_min(1e-30) for p, v in out.items()}
    return {**pooled, "quality": quality}


@torch.no_grad()
def response_nll(model, items: list[Tokenized], pad_id: int, max_tokens: int) -> torch.Tensor:
    """Returns (N,) float64 the mean NLL per response token of each item under `model` (a base or LoRA model)."""
    device = next(model.parameters()).device
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = torch.zeros(len(items), dtype=torch.float64)
    for idx in iter_batches(items, max_tokens):
        ids, mask, labels = (t.to(device) for t in collate([items[i] for i in idx], pad_id))
        h = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
        out[idx] = -_response_logprob(causal_lm, h, labels).cpu()
    return out
