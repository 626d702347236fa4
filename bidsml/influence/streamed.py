"""Influence selectors over a matrix read in row blocks: the same selections as in memory, out of core.

A 5.8M x 1k influence matrix is 23 GB of float32, more than a 24 GB machine
can hold beside anything else. The selectors only need, per pool row, a score
computed from that row (`row_scores`: LESS, sum, instance-max), or, for BIDS,
the column statistics, a sorted prefix of each column's unselected rows and the
rows the iteration picks (`bids_streamed`). Both read the matrix through a
`MatrixSource` (the influence store, or `ArraySource` for a matrix in memory)
and select exactly what the in-memory functions in `bidsml.selection` select:
tests compare them on matrices small enough to refill every column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from bidsml.selection import STATS_ROWS, bids_loop, column_stats, zscore

SAMPLE_ROWS = 16384  # evenly spaced rows the store keeps for quantiles and BIDS's first thresholds


class MatrixSource(Protocol):
    """An N x M float32 matrix read in row blocks."""

    shape: tuple[int, int]

    def blocks(self, rows: int = STATS_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (first row, float32 block) in row order."""

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Returns the rows idx (float32, in the order given)."""

    def column_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns per-column (mean, sample std, is-constant), as `bidsml.selection.column_stats` computes them."""

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (row indices, their float32 rows) of the evenly spaced sample (`sample_rows`)."""

    def nonfinite(self) -> tuple[int, int] | None:
        """Returns the first (row, column) whose score is not finite, or None."""


def sample_rows(n: int) -> np.ndarray:
    """Returns the SAMPLE_ROWS evenly spaced rows of an n-row pool (all rows when n <= SAMPLE_ROWS)."""
    return np.arange(0, n, -(-n // SAMPLE_ROWS), dtype=np.int64)


class ArraySource:
    """A matrix in memory as a MatrixSource (tests, small pools, `bidsflow select` on an array)."""

    def __init__(self, A: np.ndarray, block_rows: int = STATS_ROWS):
        self.A, self.block_rows = A, block_rows
        self.shape = A.shape
        self._stats = None

    def blocks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        step = self.block_rows
        for s in range(0, self.shape[0], step):
            yield s, np.asarray(self.A[s : s + step], dtype=np.float32)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.A[np.asarray(idx)], dtype=np.float32)

    def column_stats(self):
        if self._stats is None:
            self._stats = column_stats(self.A)
        return self._stats

    def sample(self):
        idx = sample_rows(self.shape[0])
        return idx, self.rows(idx)

    def nonfinite(self):
        bad = np.argwhere(~np.isfinite(self.A))
        return (int(bad[0][0]), int(bad[0][1])) if len(bad) else None


def as_source(A) -> MatrixSource:
    """Returns A itself when it is a MatrixSource, else an ArraySource over it."""
    return A if hasattr(A, "blocks") else ArraySource(np.asarray(A))


def row_scores(src: MatrixSource, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Returns score(block) for every row block, concatenated (a score per row, or a row of scores)."""
    return np.concatenate([score(block) for _, block in src.blocks()])


class _Transform:
    """Z[:, j'] = zscore(A[:, kept[j']]) (BIDS), or A itself (mean 0, std 1: exact in float64)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, kept: np.ndarray):
        self.kept, self.mean, self.std = kept, mean[kept], std[kept]

    def __call__(self, block: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        if cols is None:
            return zscore(block[:, self.kept], self.mean, self.std)
        return zscore(block[:, self.kept[cols]], self.mean[cols], self.std[cols])

    def raw_floor(self, t: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Returns float32 raw scores below which no z-score exceeds t (a safe prefilter in the raw matrix)."""
        with np.errstate(invalid="ignore"):
            a = self.mean[cols] + self.std[cols] * (t - (np.abs(t) + 1.0) * 1e-5)
        a = np.where(np.isfinite(t), a, -np.inf).astype(np.float32)
        return np.nextafter(a, np.float32(-np.inf))


def _descending_key(v: np.ndarray) -> np.ndarray:
    """Returns uint64 keys that sort float32 values (finite; -0.0 as 0.0) in descending order."""
    bits = (v + np.float32(0.0)).view(np.uint32).astype(np.uint64)  # + 0.0 turns -0.0 into 0.0
    ascending = np.where(bits >> np.uint64(31), ~bits & np.uint64(0xFFFFFFFF), bits | np.uint64(0x80000000))
    return np.uint64(0xFFFFFFFF) - ascending


class _StreamedColumns:
    """For each column of Z, every unselected row above a threshold, sorted (value desc, row asc).

    Such a list is an exact prefix of the column's order over its unselected
    rows, whatever its length, which is all BIDS's iteration needs (the
    in-memory `_ColumnBlocks` keeps the first B instead). Thresholds come from
    the store's evenly spaced sample (about twice `target` rows above them);
    a used-up list is refilled, with a doubled target, in one scan over the
    matrix that also refills every list with under half its target left.
    """

    def __init__(self, src: MatrixSource, tf: _Transform, selected: np.ndarray, target: int):
        self.src, self.tf, self.selected = src, tf, selected
        N, M = src.shape[0], len(tf.kept)
        _, sample = src.sample()
        self.sample = np.sort(np.ascontiguousarray(tf(sample).T), axis=1)[:, ::-1]  # (M, s): per column, descending
        self.target = np.full(M, min(target, N), dtype=np.int64)
        self.rows: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * M
        self.vals: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * M
        self.ptr = np.zeros(M, dtype=np.int64)
        self.top_row = np.zeros(M, dtype=np.int64)
        self.top_val = np.zeros(M, dtype=np.float64)
        self.scans = 0
        self._refill(np.arange(M))
        for j in range(M):
            self._set_top(j)

    def _thresholds(self, cols: np.ndarray, factor: int) -> np.ndarray:
        N, s = self.src.shape[0], self.sample.shape[1]
        rank = np.ceil(factor * self.target[cols] * s / N).astype(np.int64) + 2
        t = np.full(len(cols), -np.inf, dtype=np.float32)
        ok = rank < s
        t[ok] = self.sample[cols[ok], rank[ok]]
        return t

    def _refill(self, cols: np.ndarray) -> None:
        factor = 2
        while len(cols):
            self._scan(cols, self._thresholds(cols, factor))
            # a threshold above every unselected row of a column leaves it empty: lower it
            empty = np.array([len(self.rows[j]) == 0 for j in cols], dtype=bool)
            low = self._thresholds(cols, factor) == -np.inf
            cols = cols[empty & ~low & ~self.selected.all()]
            factor *= 4

    def _scan(self, cols: np.ndarray, t: np.ndarray) -> None:
        """One pass over the matrix: each column in cols gets its unselected rows with Z > t, sorted."""
        self.scans += 1
        floor = self.tf.raw_floor(t.astype(np.float64), cols)
        src_cols = self.tf.kept[cols]
        found_c, found_r, found_v = [], [], []
        every = len(src_cols) == self.src.shape[1] and bool((src_cols == np.arange(len(src_cols))).all())
        for start, block in self.src.blocks():
            sub = block if every else block[:, src_cols]
            mask = sub >= floor
            mask &= ~self.selected[start : start + len(block), None]
            r, c = np.nonzero(mask)
            if not len(r):
                continue
            v = zscore(sub[r, c], self.tf.mean[cols[c]], self.tf.std[cols[c]])
            keep = v > t[c]
            found_c.append(c[keep])
            found_r.append(r[keep] + start)
            found_v.append(v[keep])
        c = np.concatenate(found_c) if found_c else np.empty(0, dtype=np.int64)
        r = np.concatenate(found_r) if found_r else np.empty(0, dtype=np.int64)
        v = np.concatenate(found_v) if found_v else np.empty(0, dtype=np.float32)
        # rows arrive in ascending order, so one stable sort by (column, value descending) leaves ties by row
        order = np.argsort((c.astype(np.uint64) << np.uint64(32)) | _descending_key(v), kind="stable")
        c, r, v = c[order], r[order], v[order]
        bounds = np.searchsorted(c, np.arange(len(cols) + 1))
        for i, j in enumerate(cols):
            self.rows[j] = r[bounds[i] : bounds[i + 1]].astype(np.int64)
            self.vals[j] = v[bounds[i] : bounds[i + 1]]
            self.ptr[j] = 0

    def _set_top(self, j: int) -> None:
        rows, p = self.rows[j], self.ptr[j]
        while p < len(rows) and self.selected[rows[p]]:
            p += 1
        self.ptr[j] = p
        if p == len(rows):
            if self.selected.all():
                self.top_val[j] = -np.inf
                return
            # used up: refill it, and in the same scan every list with under half its target left unselected
            left = np.array([np.count_nonzero(~self.selected[r[p:]]) for r, p in zip(self.rows, self.ptr)])
            low = left < self.target // 2
            low[j] = True
            cols = np.flatnonzero(low)
            self.target[cols] *= 2
            self._refill(cols)
            for i in cols:  # fresh lists hold unselected rows only: no further refill
                self._set_top(int(i))
            return
        self.top_row[j] = rows[p]
        self.top_val[j] = self.vals[j][p]

    def advance(self, winner: int) -> None:
        for j in np.flatnonzero(self.top_row == winner):
            self._set_top(int(j))

    def lowest_tied_row(self, j: int, r_j: float, best: float) -> int:
        """Returns the lowest unselected row z with Z[z, j] - r_j == best (rounded as the naive loop does)."""
        rows, vals = self.rows[j], self.vals[j]
        low = None
        for p in range(self.ptr[j], len(rows)):
            z = rows[p]
            if self.selected[z]:
                continue
            if np.float64(vals[p]) - r_j != best:
                return int(low if low is not None else z)
            low = z if low is None else min(low, z)
        # the ties run past the list: read the whole column
        col = np.concatenate([self.tf(block, np.array([j]))[:, 0] for _, block in self.src.blocks()])
        return int(np.flatnonzero((col.astype(np.float64) - r_j == best) & ~self.selected)[0])


def bids_streamed(
    src: MatrixSource, k: int, normalize: bool = True, target: int = 1024
) -> tuple[np.ndarray, dict[str, int]]:
    """Returns (BIDS's selection, {'scans': passes over the matrix}) reading the matrix in row blocks.

    The same sequence as `bids_iterate(normalize_columns(A)[0], k)` (or on A
    itself without `normalize`): columns z-scored with the stored statistics
    (constant columns dropped), each column a sorted prefix of its unselected
    rows (`_StreamedColumns`), and each pick's row read from the source.
    """
    N, M = src.shape
    if normalize:
        mean, std, constant = src.column_stats()
        tf = _Transform(mean, std, np.flatnonzero(~constant))
    else:
        tf = _Transform(np.zeros(M), np.ones(M), np.arange(M))
    selected = np.zeros(N, dtype=bool)
    cols = _StreamedColumns(src, tf, selected, target)
    out = bids_loop(cols, selected, lambda z: tf(src.rows(np.array([z])))[0], k)
    return out, {"scans": cols.scans}
