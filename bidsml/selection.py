"""Selection methods over an influence matrix A (N train rows x M validation columns).

The math the selectors share: column normalisation, per-task means, top-K
with ties to the lower index, and BIDS's exact iteration. The methods
themselves are registered by name in `bidsml.selectors`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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
        self.lo = np.minimum(self.lo, chunk.min(axis=0))
        self.hi = np.maximum(self.hi, chunk.max(axis=0))
        d = chunk.astype(np.float64)
        mb = d.sum(axis=0) / nb
        d -= mb
        m2b = np.einsum("ij,ij->j", d, d)
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


def column_stats(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns per-column (mean, sample std, is-constant) in float64 (ColumnMoments over row chunks)."""
    acc = ColumnMoments(A.shape[1])
    for s in range(0, A.shape[0], STATS_ROWS):
        acc.add(np.asarray(A[s : s + STATS_ROWS]))
    return acc.result()


def zscore(block: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Returns float32 z-scores of a block of rows (columns as mean/std give them), computed in float64."""
    return ((block.astype(np.float64) - mean) / std).astype(np.float32)


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
    """For each column, a sorted prefix (value desc, row asc) of its unselected rows, refilled on demand."""

    def __init__(self, Z: np.ndarray, selected: np.ndarray, block: int):
        self.Z, self.selected, self.block = Z, selected, block
        N, M = Z.shape
        self.rows: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * M
        self.ptr = np.zeros(M, dtype=np.int64)
        self.top_row = np.zeros(M, dtype=np.int64)
        self.top_val = np.zeros(M, dtype=np.float64)
        for j0 in range(0, M, 64):  # column blocks: one contiguous copy per 64 columns
            cols = np.ascontiguousarray(Z[:, j0 : j0 + 64].T)
            for d, col in enumerate(cols):
                self._fill(j0 + d, col, np.arange(N))

    def _fill(self, j: int, col: np.ndarray, cand: np.ndarray) -> None:
        vals = col[cand]
        if len(cand) > self.block:
            # exact prefix: all values above the B-th largest, then the lowest rows among its ties
            t = np.partition(vals, len(vals) - self.block)[len(vals) - self.block]
            above = cand[vals > t]
            ties = cand[vals == t][: self.block - len(above)]
            cand = np.concatenate([above, ties])
            vals = col[cand]
        order = np.lexsort((cand, -vals.astype(np.float64)))
        self.rows[j] = cand[order]
        self.ptr[j] = 0
        self._set_top(j)

    def _set_top(self, j: int) -> None:
        rows, p = self.rows[j], self.ptr[j]
        while p < len(rows) and self.selected[rows[p]]:
            p += 1
        if p == len(rows):  # block used up: refill from the unselected rows
            cand = np.flatnonzero(~self.selected)
            if len(cand) == 0:
                self.top_val[j] = -np.inf
                return
            self._fill(j, self.Z[:, j], cand)
            return
        self.ptr[j] = p
        self.top_row[j] = rows[p]
        self.top_val[j] = self.Z[rows[p], j]

    def advance(self, winner: int) -> None:
        for j in np.flatnonzero(self.top_row == winner):
            self._set_top(int(j))

    def lowest_tied_row(self, j: int, r_j: float, best: float) -> int:
        """Returns the lowest unselected row z with Z[z, j] - r_j == best (rounded as the naive loop does)."""
        rows, Z = self.rows[j], self.Z
        low = None
        for p in range(self.ptr[j], len(rows)):
            z = rows[p]
            if self.selected[z]:
                continue
            if np.float64(Z[z, j]) - r_j != best:
                return int(low if low is not None else z)
            low = z if low is None else min(low, z)
        # the ties run past the block: check the whole column
        col = Z[:, j].astype(np.float64)
        return int(np.flatnonzero((col - r_j == best) & ~self.selected)[0])


def bids_iterate(Z: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    """Returns BIDS's iterative selection on Z, exactly as the naive loop, in O(N M log B + K M).

    Naive: repeat K times: u(z) = max_j (Z[z, j] - r_j) over unselected z;
    pick the lowest z with the largest u; r = mean of Z over the selected rows
    (sum accumulated in float64 in selection order). Here each column keeps a
    sorted block of its top unselected rows with a pointer, so
    max_z u(z) = max_j (top_j - r_j); rows whose rounded difference ties the
    best are scanned in sorted order to keep the lowest-index rule exactly.
    """
    N, M = Z.shape
    selected = np.zeros(N, dtype=bool)
    return bids_loop(_ColumnBlocks(Z, selected, min(block, N)), selected, lambda z: Z[z], k)


def bids_loop(cols, selected: np.ndarray, row: Callable[[int], np.ndarray], k: int) -> np.ndarray:
    """Returns K rows picked by BIDS's iteration over per-column sorted prefixes of the unselected rows.

    `cols` keeps each column's top unselected row and value (`top_val`,
    `lowest_tied_row`, `advance`), `selected` is the mask it reads, `row(z)`
    returns row z of Z (float32; r's sum is accumulated in float64 in
    selection order).
    """
    r = np.zeros(len(cols.top_val))
    r_sum = np.zeros(len(cols.top_val))
    out = np.empty(k, dtype=np.int64)
    for step in range(k):
        diff = cols.top_val - r
        best = diff.max()
        tied = np.flatnonzero(diff == best)
        winner = min(cols.lowest_tied_row(int(j), r[j], best) for j in tied)
        out[step] = winner
        selected[winner] = True
        r_sum += row(winner)
        r = r_sum / (step + 1)
        cols.advance(winner)
    return out


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
