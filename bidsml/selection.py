"""Selection methods over an influence matrix A (N train rows x M validation columns).

Every method takes A, the validation task labels (length M), a budget K and
a seed, and returns K row indices in selection order. Ties go to the lower
training index. Methods register themselves by name in `METHODS`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bidsml.errors import SelectionError

Selector = Callable[[np.ndarray, list[str], int, int], np.ndarray]
METHODS: dict[str, Selector] = {}


def register(name: str):
    def deco(fn: Selector) -> Selector:
        if name in METHODS:
            raise ValueError(f"selection method {name!r} registered twice")
        METHODS[name] = fn
        return fn

    return deco


def selection_label(method: str, budget: float) -> str:
    """Returns the short name of a selection, e.g. 'bids@0.1' or 'less@500'."""
    return f"{method}@{float(budget):g}"


def resolve_budget(budget: float, n: int) -> int:
    """Returns the count for a budget given as a count (>= 1) or a fraction (< 1) of n."""
    k = int(round(budget * n)) if budget < 1 else int(budget)
    if budget <= 0 or k <= 0 or k > n:
        raise SelectionError(f"budget {budget} gives {k} examples, but the pool has {n}; need 1 <= K <= N")
    return k


def check_inputs(A: np.ndarray, tasks: list[str], k: int) -> None:
    """Raises SelectionError when scores, labels or budget are unusable."""
    if A.ndim != 2:
        raise SelectionError(f"influence matrix must be 2-D (N train x M validation), got shape {A.shape}")
    if len(tasks) != A.shape[1]:
        raise SelectionError(f"{len(tasks)} task labels for {A.shape[1]} validation columns")
    if not np.isfinite(A).all():
        r, c = np.argwhere(~np.isfinite(A))[0]
        raise SelectionError(f"influence matrix has a non-finite score at row {r}, column {c}")
    if not 1 <= k <= A.shape[0]:
        raise SelectionError(f"budget K={k} must be within 1..N={A.shape[0]}")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Returns the indices of the k highest scores; ties go to the lower index."""
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


def task_means(A: np.ndarray, tasks: list[str]) -> tuple[np.ndarray, list[str]]:
    """Returns (N x T) per-task means of A's columns, grouped by label (not position), and the task names."""
    names = sorted(set(tasks))
    labels = np.asarray(tasks)
    return np.stack([A[:, labels == t].mean(axis=1) for t in names], axis=1), names


def normalize_columns(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (Z, kept): every column z-scored over the rows (sample std); constant columns dropped."""
    std = A.std(axis=0, ddof=1) if A.shape[0] > 1 else np.zeros(A.shape[1])
    kept = np.flatnonzero(A.max(axis=0) > A.min(axis=0))  # exact test: std of a constant can round to > 0
    Z = (A[:, kept] - A[:, kept].mean(axis=0)) / std[kept]
    return Z, kept


@register("random")
def select_random(A, tasks, k, seed):
    return np.random.default_rng(seed).permutation(A.shape[0])[:k]


@register("less")
def select_less(A, tasks, k, seed):
    means, _ = task_means(A, tasks)
    return top_k(means.max(axis=1), k)


@register("sum")
def select_sum(A, tasks, k, seed):
    return top_k(A.mean(axis=1), k)


@register("instance-max")
def select_instance_max(A, tasks, k, seed):
    return top_k(A.max(axis=1), k)


@register("norm-instance-max")
def select_norm_instance_max(A, tasks, k, seed):
    Z, _ = normalize_columns(A)
    return top_k(Z.max(axis=1), k)


def bids_iterate(Z: np.ndarray, k: int) -> np.ndarray:
    """Returns BIDS's iterative selection on Z, exactly as the naive loop, in O(N M log N + K M).

    Naive: repeat K times: u(z) = max_j (Z[z, j] - r_j) over unselected z;
    pick the lowest z with the largest u; r = mean of Z over the selected rows
    (accumulated in selection order). Here each column is sorted once
    (descending value, then ascending row) with a pointer at its highest
    unselected row, so max_z u(z) = max_j (top_j - r_j). Rows whose rounded
    difference ties the best are scanned in sorted order to keep the naive
    loop's lowest-index rule exactly.
    """
    N, M = Z.shape
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    order = np.lexsort((np.broadcast_to(np.arange(N)[:, None], (N, M)), -Z), axis=0)  # (N, M) rows per column
    ptr = np.zeros(M, dtype=np.int64)
    selected = np.zeros(N, dtype=bool)
    r = np.zeros(M)
    r_sum = np.zeros(M)
    cols = np.arange(M)
    out = np.empty(k, dtype=np.int64)
    for step in range(k):
        top_rows = order[ptr, cols]
        diff = Z[top_rows, cols] - r
        best = diff.max()
        winner = N
        for j in np.flatnonzero(diff == best):
            p = ptr[j]
            while p < N:
                z = order[p, j]
                if selected[z]:
                    p += 1
                    continue
                if Z[z, j] - r[j] != best:
                    break
                winner = min(winner, z)
                p += 1
        out[step] = winner
        selected[winner] = True
        r_sum += Z[winner]
        r = r_sum / (step + 1)
        # advance pointers of columns whose top row was just taken
        for j in np.flatnonzero(order[ptr, cols] == winner):
            p = ptr[j]
            while p < N and selected[order[p, j]]:
                p += 1
            ptr[j] = p
        if step + 1 < k and (ptr >= N).any():
            raise SelectionError("BIDS ran out of rows")  # unreachable while k <= N
    return out


def bids_naive(Z: np.ndarray, k: int) -> np.ndarray:
    """Returns BIDS's selection by the plain O(K N M) loop (the reference for tests)."""
    N, M = Z.shape
    selected = np.zeros(N, dtype=bool)
    r_sum = np.zeros(M)
    r = np.zeros(M)
    out = []
    for step in range(k):
        u = (Z - r).max(axis=1)
        u[selected] = -np.inf
        z = int(np.flatnonzero(u == u.max())[0])
        out.append(z)
        selected[z] = True
        r_sum += Z[z]
        r = r_sum / (step + 1)
    return np.asarray(out, dtype=np.int64)


@register("bids")
def select_bids(A, tasks, k, seed):
    Z, kept = normalize_columns(A.astype(np.float64))
    if Z.shape[1] == 0:
        raise SelectionError("every validation column is constant; BIDS has nothing to normalise")
    return bids_iterate(Z, k)


@register("bids-no-norm")
def select_bids_no_norm(A, tasks, k, seed):
    return bids_iterate(A.astype(np.float64), k)


@register("bids-task")
def select_bids_task(A, tasks, k, seed):
    Z, kept = normalize_columns(A.astype(np.float64))
    means, _ = task_means(Z, [tasks[j] for j in kept])
    return bids_iterate(means, k)


def select(method: str, A: np.ndarray, tasks: list[str], budget: float, seed: int = 0) -> np.ndarray:
    """Returns the selected row indices (in selection order) of `method` at `budget`."""
    if method not in METHODS:
        raise SelectionError(f"unknown selection method {method!r}; choose from {', '.join(METHODS)}")
    k = resolve_budget(budget, A.shape[0])
    check_inputs(A, tasks, k)
    for t in set(tasks):
        if not t:
            raise SelectionError("a validation column has an empty task label")
    return np.asarray(METHODS[method](A, tasks, k, seed), dtype=np.int64)


def constant_columns(A: np.ndarray) -> list[int]:
    """Returns the validation columns BIDS drops because they are constant over the pool."""
    _, kept = normalize_columns(A.astype(np.float64))
    return sorted(set(range(A.shape[1])) - set(kept.tolist()))
