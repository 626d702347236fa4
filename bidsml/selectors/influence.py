"""Influence-based selectors: LESS (task-max), its variants, and BIDS.

Each takes the influence matrix A (N pool rows x M validation columns) as an
array or a `bidsml.influence.streamed.MatrixSource` (the store, read in row blocks: out of
core), the validation task labels, K and a seed; ties go to the lower training
index. Scores per row are computed block by block and BIDS iterates on sorted
column prefixes (`bids_streamed`), so an array and the store it was written to
give the same selection.
"""

from __future__ import annotations

import numpy as np

from bidsml.errors import SelectionError
from bidsml.selection import bids_iterate, task_means, top_k, zscore
from bidsml.selectors.registry import SelectorInputs, register_selector
from bidsml.influence.streamed import as_source, bids_streamed, row_scores


@register_selector("random")
def select_random(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(x.n)[:k]


@register_selector("less")
def select_less(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    tasks = x.tasks
    return top_k(row_scores(as_source(x.influence), lambda b: task_means(b, tasks)[0].max(axis=1)), k)


@register_selector("sum")
def select_sum(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    return top_k(row_scores(as_source(x.influence), lambda b: b.mean(axis=1)), k)


@register_selector("instance-max")
def select_instance_max(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    return top_k(row_scores(as_source(x.influence), lambda b: b.max(axis=1)), k)


def _kept(src) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, std, constant = src.column_stats()
    kept = np.flatnonzero(~constant)
    if len(kept) == 0:
        raise SelectionError("every validation column is constant; BIDS has nothing to normalise")
    return mean[kept], std[kept], kept


@register_selector("norm-instance-max")
def select_norm_instance_max(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    src = as_source(x.influence)
    mean, std, kept = _kept(src)
    return top_k(row_scores(src, lambda b: zscore(b[:, kept], mean, std).max(axis=1)), k)


@register_selector("bids")
def select_bids(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    src = as_source(x.influence)
    _kept(src)
    return bids_streamed(src, k)[0]


@register_selector("bids-no-norm")
def select_bids_no_norm(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    return bids_streamed(as_source(x.influence), k, normalize=False)[0]


@register_selector("bids-task")
def select_bids_task(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    src = as_source(x.influence)
    mean, std, kept = _kept(src)
    labels = [x.tasks[j] for j in kept]
    means = row_scores(src, lambda b: task_means(zscore(b[:, kept], mean, std), labels)[0])
    return bids_iterate(means, k)
