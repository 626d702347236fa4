"""Selection methods over an influence matrix A (N train rows x M validation columns).

The math the selectors share: column normalisation, per-task means, top-K
with ties to the lower index, and BIDS's exact iteration. The methods
themselves are registered by name in `bidsml.selectors`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bidsml.bids_picks import ColumnLists, bids_loop, lowest_tied_row, set_tops, z_value
from bidsml.errors import SelectionError


def selection_label(method: str, budget: float) -> str:
    """Returns the short name of a selection, e.g. 'bids@0.1' or 'less@500'."""
    return f"{method}@{float(budget):g}"


def resolve_budget(budget: float, n: int) -> int:
    """Returns the count for a budget given as a count (>= 1) or a fraction (< 1) of n."""
    k = int(round(budget * n)) if budget < 1 else int(budget)
    if budget <= 0 or k <= 0 or k > n:
        raise SelectionError(f"budget {budget} gives {k} examples, but the pool has {n}; need 1 <= K <= N")
    return k


def check_inputs(A, tasks: list[str], k: int) -> None:
    """Raises SelectionError when scores (an array or a `bidsml.influence.streamed.MatrixSource`), labels or budget are
    unusable."""
    if len(A.shape) != 2:
        raise SelectionError(f"influence matrix must be 2-D (N train x M validation), got shape {A.shape}")
    if len(tasks) != A.shape[1]:
        raise SelectionError(f"{len(tasks)} task labels for {A.shape[1]} validation columns")
    bad = A.nonfinite()
    if bad is not None:
        raise SelectionError(f"influence matrix has a non-finite score at row {bad[0]}, column {bad[1]}")
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


STATS_ROWS = 16384  # rows per chunk of the column statistics (in memory and streamed alike: the same bits)


class ColumnMoments:
    """Per-column count, mean, sum of squared deviations, min and max, fed row blocks in order (float64).

    Each STATS_ROWS-row chunk (at fixed global offsets, whatever blocks the rows
    arrive in) gets its own two-pass mean and M2, merged into the total by
    Chan et al.'s pairwise update: one pass over the data, and the same bits
    for a matrix in memory and one streamed from disk.
    """

    def __init__(self, m: int):
        self.n = 0
        self.mean = np.zeros(m)
        self.m2 = np.zeros(m)
        self.lo = np.full(m, np.inf)
        self.hi = np.full(m, -np.inf)
        self._pending: list[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        """Adds the next rows (B, M), in row order."""
        if self._pending:
            block = np.concatenate(self._pending + [block])
            self._pending = []
        s = 0
        while len(block) - s >= STATS_ROWS:
            self._merge(block[s : s + STATS_ROWS])
            s += STATS_ROWS
        if s < len(block):
            self._pending = [block[s:]]

    def _merge(self, chunk: np.ndarray) -> None:
        nb = len(chunk)
        mb, m2b, lo, hi = _chunk_moments(chunk)
        self.lo = np.minimum(self.lo, lo)
        self.hi = np.maximum(self.hi, hi)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta * delta * (self.n * nb / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns per-column (mean, sample std, is-constant) over every row added."""
        if self._pending:
            self._merge(self._pending.pop())
        std = np.sqrt(self.m2 / max(self.n - 1, 1))
        return self.mean, std, ~(self.hi > self.lo)  # exact constant test: the std of a constant can round to > 0


@njit(cache=True, nogil=True)
def _chunk_moments(chunk):
    """Returns per column of a chunk (rows x M): the mean and the sum of squared deviations from it (two passes in
    float64, rows summed in order), the min and the max (NaN when the column has one)."""
    nb, m = chunk.shape
    total, m2 = np.zeros(m), np.zeros(m)
    lo, hi = np.full(m, np.inf), np.full(m, -np.inf)
    for i in range(nb):
        for j in range(m):
            x = np.float64(chunk[i, j])
            total[j] += x
            if x < lo[j] or x != x:
                lo[j] = x
            if x > hi[j] or x != x:
                hi[j] = x
    mean = total / nb
    for i in range(nb):
        for j in range(m):
            d = np.float64(chunk[i, j]) - mean[j]
            m2[j] += d * d
    return mean, m2, lo, hi


def column_stats(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns per-column (mean, sample std, is-constant) in float64 (ColumnMoments over row chunks)."""
    acc = ColumnMoments(A.shape[1])
    for s in range(0, A.shape[0], STATS_ROWS):
        acc.add(np.asarray(A[s : s + STATS_ROWS]))
    return acc.result()


def zscore(block: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Returns float32 z-scores of a block of rows (columns as mean/std give them), computed in float64.

    Each is float32((float64(x) - mean) / std), the bits BIDS's loop uses (compiled for 2-D blocks).
    """
    if block.ndim != 2:
        return ((block.astype(np.float64) - mean) / std).astype(np.float32)
    return _zscore_2d(block, np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64))


@njit(cache=True)
def _zscore_2d(block, mean, std):
    out = np.empty(block.shape, dtype=np.float32)
    for i in range(block.shape[0]):
        for j in range(block.shape[1]):
            out[i, j] = z_value(block[i, j], mean[j], std[j])
    return out


def normalize_columns(A: np.ndarray, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Returns (Z float32, kept): columns z-scored over the rows (sample std); constant columns dropped.

    With `overwrite` (and a float32 A with no constant column) Z is written
    into A's memory, so a 1M x 1k matrix needs 4 GB, not 8.
    """
    mean, std, constant = column_stats(A)
    kept = np.flatnonzero(~constant)
    if overwrite and A.dtype == np.float32 and len(kept) == A.shape[1]:
        Z = A
    else:
        Z = np.empty((A.shape[0], len(kept)), dtype=np.float32)
    for s in range(0, A.shape[0], 65536):
        Z[s : s + 65536] = zscore(A[s : s + 65536, kept], mean[kept], std[kept])
    return Z, kept


class _ColumnBlocks:
    """For each column, a sorted prefix (value desc, row asc) of its top B unselected rows, refilled on demand."""

    def __init__(self, Z: np.ndarray, selected: np.ndarray, block: int):
        self.Z, self.selected = Z, selected
        N, M = Z.shape
        self.width = np.full(M, block, dtype=np.int64)  # each column's block size (doubled by long ties)
        self.lists = ColumnLists(M, Z.dtype)
        self.top_row = np.zeros(M, dtype=np.int64)
        self.top_val = np.zeros(M, dtype=np.float64)
        self.tops = np.zeros(1, dtype=np.int64)  # no ring of new tops: the matrix is in memory
        first = []
        for j0 in range(0, M, 64):  # column blocks: one contiguous copy per 64 columns
            cols = np.ascontiguousarray(Z[:, j0 : j0 + 64].T)
            first += [self._prefix(j0 + d, col, np.arange(N)) for d, col in enumerate(cols)]
        bounds = np.cumsum([0] + [len(rows) for rows, _ in first])
        self.lists.put(np.arange(M), np.concatenate([r for r, _ in first]), np.concatenate([v for _, v in first]), bounds)
        self._set_tops(np.arange(M))

    def _prefix(self, j: int, col: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns the first B of the rows cand in column j's order (value desc, row asc), and their values."""
        vals, block = col[cand], int(self.width[j])
        if len(cand) > block:
            # exact prefix: all values above the B-th largest, then the lowest rows among its ties
            t = np.partition(vals, len(vals) - block)[len(vals) - block]
            above = cand[vals > t]
            ties = cand[vals == t][: block - len(above)]
            cand = np.concatenate([above, ties])
            vals = col[cand]
        order = np.lexsort((cand, -vals.astype(np.float64)))
        return cand[order].astype(np.int64), vals[order]

    def _fill(self, j: int, col: np.ndarray, cand: np.ndarray) -> None:
        rows, vals = self._prefix(j, col, cand)
        self.lists.put(np.array([j]), rows, vals, np.array([0, len(rows)]))

    def _set_tops(self, cols: np.ndarray) -> None:
        L, exhausted = self.lists, np.zeros(len(self.top_val), dtype=bool)
        set_tops(L.rows, L.vals, L.pos, L.end, cols, self.selected, self.top_row, self.top_val, exhausted, self.tops)
        for j in np.flatnonzero(exhausted):  # block used up: refill from the unselected rows
            cand = np.flatnonzero(~self.selected)
            if len(cand) == 0:
                self.top_val[j] = -np.inf
                continue
            self._fill(int(j), self.Z[:, j], cand)
            self._set_tops(np.array([j]))

    def refill(self, cols: np.ndarray, step: int, k: int) -> None:
        """Refills the lists that ran out (`bids_loop` calls it)."""
        self._set_tops(cols)

    def tie_past_list(self, j: int, step: int, k: int) -> bool:
        """A tie ran past the end of column j's block: refills it from the unselected rows with twice the block
        (returns True: pick again), unless the block already holds every unselected row (False)."""
        rows, _ = self.lists.remaining(j)
        left = int(np.count_nonzero(~self.selected[rows]))
        unselected = np.flatnonzero(~self.selected)
        if left >= len(unselected):
            return False
        self.width[j] = max(2 * self.width[j], 2 * left)
        self._fill(j, self.Z[:, j], unselected)
        self._set_tops(np.array([j]))
        return True

    def lowest_tied_row(self, j: int, r_j: float, best: float) -> int:
        """Returns the lowest unselected row z with Z[z, j] - r_j == best (rounded as the naive loop does)."""
        return lowest_tied_row(*self.lists.remaining(j), self.selected, r_j, best, lambda: self.Z[:, j])


def bids_iterate(Z: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    """Returns BIDS's iterative selection on Z, exactly as the naive loop, in O(N M log B + K M).

    Naive: repeat K times: u(z) = max_j (Z[z, j] - r_j) over unselected z;
    pick the lowest z with the largest u; r = mean of Z over the selected rows
    (sum accumulated in float64 in selection order). Here each column keeps a
    sorted block of its top unselected rows, and the compiled loop of
    `bidsml.bids_picks` makes the picks.
    """
    N, M = Z.shape
    Z = np.ascontiguousarray(Z)
    selected = np.zeros(N, dtype=bool)
    return bids_loop(_ColumnBlocks(Z, selected, min(block, N)), selected, Z, None, k)


def bids_naive(Z: np.ndarray, k: int) -> np.ndarray:
    """Returns BIDS's selection by the plain O(K N M) loop (the reference for tests and benchmarks)."""
    N, M = Z.shape
    Z = Z.astype(np.float64)  # the same arithmetic as bids_iterate: float64 differences
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


def constant_columns(A: np.ndarray) -> list[int]:
    """Returns the validation columns BIDS drops because they are constant over the pool."""
    _, _, constant = column_stats(A)
    return np.flatnonzero(constant).tolist()
