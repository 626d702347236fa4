"""PASER's capability degradation of one example: the Jensen-Shannon divergence between the pruned and the
original model's next-token distributions over the example's instruction.

As the published code: the instruction alone is tokenized (with the tokenizer's special tokens), both models
score it, and the JSD of the two distributions is SUMMED over its positions (`jsd_sum`, what PASER's cluster
means and per-row scores use; longer instructions weigh more); `jsd_mean` (per position) is stored beside it.
Natural logarithms, so each position's JSD lies in [0, ln 2].
"""

from __future__ import annotations

import math

import torch


def position_jsd(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Returns (..., ) the JSD of softmax(logits_p) and softmax(logits_q) along the last axis, from log-probs."""
    lp = torch.log_softmax(logits_p.float(), dim=-1)
    lq = torch.log_softmax(logits_q.float(), dim=-1)
    lm = torch.logsumexp(torch.stack([lp, lq]), dim=0) - math.log(2.0)
    kl_pm = (lp.exp() * (lp - lm)).sum(-1)
    kl_qm = (lq.exp() * (lq - lm)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


@torch.no_grad()
def instruction_jsd(pruned, original, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (jsd_sum, jsd_mean) per row of a right-padded batch of instructions (pad positions left out)."""
    jsd = position_jsd(
        pruned(input_ids=ids, attention_mask=mask).logits, original(input_ids=ids, attention_mask=mask).logits
    )
    m = mask.to(jsd.dtype)
    total = (jsd * m).sum(-1)
    return total.cpu().double(), (total / m.sum(-1).clamp(min=1)).cpu().double()
