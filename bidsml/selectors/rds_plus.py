"""RDS+ (Ivison et al. 2025, "Large-Scale Data Selection for Instruction Tuning").

The strongest cheap baseline at scale: the pretrained model's last hidden
states, mean-pooled with position weights (token t of T weighs t / sum(1..T),
as in SGPT's weighted mean pooling, so later tokens, which have seen more of
the sequence, count more), L2-normalised; cosine to every validation
example; per target task the mean over that task's validation examples; then
round-robin over tasks (sorted by name), each taking its best-scoring row not
yet taken, until K rows are chosen.
"""

from __future__ import annotations

import numpy as np

from bidsml.selection import task_means
from bidsml.selectors.registry import SelectorInputs, register_selector


def round_robin_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Returns K rows: columns take turns (in order), each its highest unselected row (ties: lower row)."""
    n, m = scores.shape
    orders = [np.lexsort((np.arange(n), -scores[:, j])) for j in range(m)]
    ptr = [0] * m
    taken = np.zeros(n, dtype=bool)
    out: list[int] = []
    while len(out) < k:
        for j in range(m):
            if len(out) == k:
                break
            while taken[orders[j][ptr[j]]]:
                ptr[j] += 1
            row = int(orders[j][ptr[j]])
            taken[row] = True
            out.append(row)
    return np.asarray(out, dtype=np.int64)


@register_selector("rds-plus", needs=("representations",))
def select_rds_plus(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    """RDS+: position-weighted mean-pooled states, cosine, mean per task, round-robin over tasks."""
    S = x.representations["train_weighted"] @ x.representations["val_weighted"].T  # (N, M) cosines
    means, _ = task_means(S, x.tasks)  # (N, T), tasks in sorted order
    return round_robin_top(means, k)
