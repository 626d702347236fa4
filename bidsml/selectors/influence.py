"""Influence-based selectors: LESS (task-max), its variants, and BIDS.

Each takes the influence matrix A (N pool rows x M validation columns), the
validation task labels, K and a seed; ties go to the lower training index.
"""

from __future__ import annotations

import numpy as np

from bidsml.errors import SelectionError
from bidsml.selection import bids_iterate, normalize_columns, task_means, top_k
from bidsml.selectors.registry import SelectorInputs, register_selector


@register_selector("random")
def select_random(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    A = x.influence
    return np.random.default_rng(seed).permutation(A.shape[0])[:k]


@register_selector("less")
def select_less(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    A, tasks = x.influence, x.tasks
    means, _ = task_means(A, tasks)
    return top_k(means.max(axis=1), k)


@register_selector("sum")
def select_sum(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    A = x.influence
    return top_k(A.mean(axis=1), k)


@register_selector("instance-max")
def select_instance_max(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    A = x.influence
    return top_k(A.max(axis=1), k)


@register_selector("norm-instance-max")
def select_norm_instance_max(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    A = x.influence
    Z, _ = normalize_columns(A, overwrite=x.owned)
    return top_k(Z.max(axis=1), k)


@register_selector("bids")
def select_bids(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    A = x.influence
    Z, kept = normalize_columns(A, overwrite=x.owned)
    if Z.shape[1] == 0:
        raise SelectionError("every validation column is constant; BIDS has nothing to normalise")
    return bids_iterate(Z, k)


@register_selector("bids-no-norm")
def select_bids_no_norm(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    A = x.influence
    return bids_iterate(A, k)


@register_selector("bids-task")
def select_bids_task(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    A, tasks = x.influence, x.tasks
    Z, kept = normalize_columns(A, overwrite=x.owned)
    means, _ = task_means(Z, [tasks[j] for j in kept])
    return bids_iterate(means, k)
