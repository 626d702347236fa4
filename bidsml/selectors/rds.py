"""RDS: cosine of mean-pooled last hidden states to the validation examples, aggregated like LESS."""

from __future__ import annotations

import numpy as np

from bidsml.selection import task_means, top_k
from bidsml.selectors.registry import SelectorInputs, register_selector


@register_selector("rds", needs=("representations",))
def select_rds(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    """RDS: representation cosines, mean per task, max over tasks; top K."""
    S = x.representations["train_mean"] @ x.representations["val_mean"].T  # (N, M) cosines
    means, _ = task_means(S, x.tasks)
    return top_k(means.max(axis=1), k)
